use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::server::Nodens;
use crate::support::upstream::{build_query, udp_exchange, FakeUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_the_upstream_and_then_from_cache() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    for _ in 0..2 {
        let q = build_query("www.example.com.", RecordType::A, None);
        let r = udp_exchange(nodens.dns, &q, Duration::from_secs(2))
            .await
            .expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
    }
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 1);
    assert!(nodens.stop().await);
}
