//! `herald-bench floor-server`: the fan-out floor. A bare tokio server that
//! accepts TCP connections and broadcasts the same 100-byte payloads to
//! every socket, writing all of a connection's queued frames in one write.
//! No Kafka, no protocol (an HTTP status line, then `data: …\n\n` frames).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

#[derive(clap::Args)]
pub struct FloorArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Start publishing once this many clients are connected.
    #[arg(long)]
    pub clients: usize,
    /// Records per second.
    #[arg(long)]
    pub rate: u64,
    #[arg(long)]
    pub records: u64,
}

pub fn run(args: FloorArgs) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .expect("bind");
        println!(
            "{}",
            serde_json::json!({"listen": listener.local_addr().expect("addr").to_string()})
        );
        let (tx, _) = broadcast::channel::<Bytes>(65536);
        let connected = Arc::new(AtomicUsize::new(0));
        let tx2 = tx.clone();
        let c2 = connected.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = tx2.subscribe();
                let c = c2.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if s.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
                        return;
                    }
                    c.fetch_add(1, Ordering::Relaxed);
                    let mut out = Vec::with_capacity(4096);
                    loop {
                        match rx.recv().await {
                            Ok(b) => out.extend_from_slice(&b),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                        // Coalesce everything already queued into one write.
                        while let Ok(b) = rx.try_recv() {
                            out.extend_from_slice(&b);
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        if out.capacity() > 64 * 1024 {
                            out.shrink_to(4096);
                        }
                    }
                });
            }
        });
        while connected.load(Ordering::Relaxed) < args.clients {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!("{}", serde_json::json!({"publishing": true}));
        let started = Instant::now();
        for n in 0..args.records {
            let at = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            tokio::time::sleep_until(at.into()).await;
            let json = crate::payload(n);
            let _ = tx.send(Bytes::from(format!("data: {json}\n\n")));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
}
