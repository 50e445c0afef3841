//! Turning process signals into a shutdown value. The token is created in
//! `main` and passed down; nothing reads a global.

use tokio_util::sync::CancellationToken;

/// One message per SIGHUP (a config reload), for as long as the receiver
/// lives. If the signal cannot be listened for, that is logged and the
/// channel closes: SIGHUP then does what the runtime leaves it to do.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // Listening from here on, before this returns: a SIGHUP right after
    // start reloads rather than ends the process.
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP, so no reload on it: {e}");
            return rx;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Several SIGHUPs while a reload runs make one more reload.
            if tx.try_send(()).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}
