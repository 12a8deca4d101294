//! In-process servers of the kit (token issuer, recording ext_proc server) run as tasks that stop
//! on a signal.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The future a server is handed to end on: it completes when the stop signal is sent.
pub(crate) type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns the server `serve` builds around a [`StopSignal`], and returns the sender of that
/// signal and the server's task. A server that fails is reported on stderr, naming `what`: the
/// test using it then fails on what the server did not answer.
pub(crate) fn spawn_until_stopped<F, E>(
    what: &'static str,
    serve: impl FnOnce(StopSignal) -> F,
) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let (shutdown, stopped) = oneshot::channel::<()>();
    let served = serve(Box::pin(async move {
        let _ = stopped.await;
    }));
    let server = tokio::spawn(async move {
        if let Err(err) = served.await {
            eprintln!("{what} failed: {err}");
        }
    });
    (shutdown, server)
}
