//! Rules that span several keys.

use crate::attr::Attrs;
use crate::ctxt::Ctxt;

pub(crate) fn check(attrs: &Attrs, cx: &mut Ctxt) {
    if let (Some(track), Some(exclude)) = (&attrs.track_only, &attrs.exclude_fields) {
        let later = if exclude.position > track.position {
            exclude.key
        } else {
            track.key
        };
        cx.error(
            later,
            "`track_only` and `exclude_fields` cannot be used together\n\
             help: use `track_only` to name the audited columns, or `exclude_fields` to name the others",
        );
    }
}
