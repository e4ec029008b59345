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
    let Some(mask) = &attrs.mask else {
        return;
    };
    for column in &mask.value {
        if let Some(exclude) = &attrs.exclude_fields
            && exclude.value.iter().any(|c| c.ident == column.ident)
        {
            cx.error(
                column.ident.span(),
                format!(
                    "column `{}` is both masked and excluded\n\
                     help: choose one: excluded values never reach the log, masked ones reach it as digests",
                    column.ident
                ),
            );
        }
        if let Some(track) = &attrs.track_only
            && !track.value.iter().any(|c| c.ident == column.ident)
        {
            cx.error(
                column.ident.span(),
                format!(
                    "masked column `{}` is not among `track_only`\n\
                     help: add it to `track_only`, or do not mask it",
                    column.ident
                ),
            );
        }
    }
}
