//! Connection limits: over `limits.max_connections` a client gets `503`,
//! over `limits.max_connections_per_ip` a `429`, each with a JSON error
//! naming the limit; a freed place is usable again.

mod common;

use std::time::Instant;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_total_connection_limits_are_enforced_with_clear_errors() {
    let topic = unique_topic("limits");
    create_topic(&topic, 1).await;
    let mut cfg = config(&[(&topic, "l")]);
    cfg.limits.max_connections_per_ip = 2;
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();
    let first = Sse::connect(addr, "channel=l", None).await;
    let _second = Sse::connect(addr, "channel=l", None).await;
    let third = Sse::connect(addr, "channel=l", None).await;
    assert_eq!(third.status, 429);
    let body = third.error_body().await;
    assert_eq!(body["error"]["code"], "too_many_connections_per_ip");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{body}"
    );
    // A place freed is usable again (once the server has seen the close).
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let again = Sse::connect(addr, "channel=l", None).await;
        if again.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    herald.stop().await;

    let mut cfg = config(&[(&topic, "l")]);
    cfg.limits.max_connections = 2;
    let herald = start(cfg, &[(&topic, 1)]).await;
    let addr = herald.local_addr();
    let _a = Sse::connect(addr, "channel=l", None).await;
    let _b = Sse::connect(addr, "channel=l", None).await;
    let refused = Sse::connect(addr, "channel=l", None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.error_body().await["error"]["code"],
        "too_many_connections"
    );
    herald.stop().await;
}
