//! Ambient audit context: set it for a scope, and every transaction pg-audit opens inside the
//! scope carries it.
//!
//! ```
//! use pg_audit_runtime::ambient;
//!
//! let _guard = ambient::use_change_reason("Bulk update for compliance");
//! // Diesel's `conn.audited_transaction(..)`, sqlx's `pool.begin_audited(..)`: logged with it.
//! assert_eq!(ambient::current().change_reason.as_deref(), Some("Bulk update for compliance"));
//! ```
//!
//! **Sync code** keeps the context in a thread-local; [`use_context`] and
//! [`use_change_reason`] return a guard that restores the previous context when dropped. The
//! guard is not `Send`, so it cannot be held across an `.await` in a spawned task (where the
//! task could resume on another thread).
//!
//! **Async code** wraps a future with [`AuditContext::scope`] (or [`scope_change_reason`]):
//! the context is installed around every poll, so it survives `.await` whichever thread runs
//! the task, with any executor. `#[with_change_reason("...")]` on an `async fn` does this for
//! the function's body, and on a plain `fn` uses a guard.
//!
//! A new task or thread starts with no context: `tokio::spawn` and `spawn_blocking` do not
//! carry it. Pass it on with [`current`]:
//!
//! ```no_run
//! # use pg_audit_runtime::ambient;
//! # async fn f() {
//! tokio::spawn(ambient::current().scope(async move { /* ... */ }));
//! let ctx = ambient::current();
//! tokio::task::spawn_blocking(move || ctx.enter(|| { /* ... */ }));
//! # }
//! ```
//!
//! or, with the `tokio` feature, `spawn` and `spawn_blocking`, which do exactly that.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::context::AuditContext;

thread_local! {
    static CURRENT: RefCell<AuditContext> = RefCell::new(AuditContext::default());
}

/// The ambient context of the running code: the innermost scope's, merged with the scopes
/// around it.
pub fn current() -> AuditContext {
    CURRENT.with(|c| c.borrow().clone())
}

fn replace(ctx: AuditContext) -> AuditContext {
    CURRENT.with(|c| c.replace(ctx))
}

/// Restores the previous ambient context when dropped.
#[must_use = "the context applies until the guard is dropped"]
#[derive(Debug)]
pub struct ContextGuard {
    previous: Option<AuditContext>,
    // Thread-local state: the guard must stay on its thread.
    _not_send: PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            replace(previous);
        }
    }
}

/// Nests `ctx` inside the current ambient context until the guard is dropped.
pub fn use_context(ctx: &AuditContext) -> ContextGuard {
    let merged = current().merged(ctx);
    ContextGuard {
        previous: Some(replace(merged)),
        _not_send: PhantomData,
    }
}

/// Nests a change reason inside the current ambient context until the guard is dropped.
pub fn use_change_reason(reason: impl Into<String>) -> ContextGuard {
    use_context(&AuditContext::new().change_reason(reason))
}

/// Runs `future` with `reason` nested in the current ambient context (as captured now).
pub fn scope_change_reason<F: Future>(reason: impl Into<String>, future: F) -> Scoped<F> {
    current()
        .merged(&AuditContext::new().change_reason(reason))
        .scope(future)
}

impl AuditContext {
    /// Runs `future` with this as the ambient context, installed around every poll.
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            ctx: Some(self),
            future: Box::pin(future),
        }
    }

    /// Runs `f` with this as the ambient context.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let _guard = ContextGuard {
            previous: Some(replace(self)),
            _not_send: PhantomData,
        };
        f()
    }
}

/// A future running with an ambient audit context; see [`AuditContext::scope`].
#[must_use = "futures do nothing unless awaited"]
pub struct Scoped<F> {
    ctx: Option<AuditContext>,
    future: Pin<Box<F>>,
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let ctx = this.ctx.take().unwrap_or_default();
        let restore = RestoreOnExit {
            outside: Some(replace(ctx)),
            inside: &mut this.ctx,
        };
        let result = this.future.as_mut().poll(cx);
        drop(restore);
        result
    }
}

/// Puts the context from outside a poll back when the poll ends — returning or unwinding, so
/// a panicking future never leaves its context to the next task on the thread — and keeps
/// what the poll left for the next poll (a guard held across an await in a !Send future).
struct RestoreOnExit<'a> {
    outside: Option<AuditContext>,
    inside: &'a mut Option<AuditContext>,
}

impl Drop for RestoreOnExit<'_> {
    fn drop(&mut self) {
        if let Some(outside) = self.outside.take() {
            *self.inside = Some(replace(outside));
        }
    }
}

/// `tokio::spawn` carrying the current ambient context into the new task.
#[cfg(feature = "tokio")]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(current().scope(future))
}

/// `tokio::task::spawn_blocking` carrying the current ambient context onto the blocking
/// thread.
#[cfg(feature = "tokio")]
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ctx = current();
    tokio::task::spawn_blocking(move || ctx.enter(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert!(current().is_empty());
        {
            let _outer = use_change_reason("outer");
            {
                let _inner = use_context(&AuditContext::new().user_id("u").change_reason("inner"));
                assert_eq!(current().change_reason.as_deref(), Some("outer; inner"));
                assert_eq!(current().user_id.as_deref(), Some("u"));
            }
            assert_eq!(current().change_reason.as_deref(), Some("outer"));
            assert_eq!(current().user_id.as_deref(), None);
        }
        assert!(current().is_empty());
    }

    #[test]
    fn scoped_futures_carry_their_context_across_polls() {
        use std::task::Wake;
        struct Noop;
        impl Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        // A future that yields once, then reads the context.
        let mut yielded = false;
        let future = std::future::poll_fn(move |cx| {
            if !yielded {
                yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(current().change_reason.as_deref().map(str::to_owned))
        });
        let mut scoped = std::pin::pin!(scope_change_reason("async reason", future));
        let waker = std::sync::Arc::new(Noop).into();
        let mut cx = Context::from_waker(&waker);
        assert!(scoped.as_mut().poll(&mut cx).is_pending());
        // Between polls the thread is clean.
        assert!(current().is_empty());
        assert_eq!(
            scoped.as_mut().poll(&mut cx),
            Poll::Ready(Some("async reason".to_owned()))
        );
        assert!(current().is_empty());
    }
}
