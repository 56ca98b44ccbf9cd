//! Compressed event streams, opt-in, black-box against the binary: a client that sends
//! `Accept-Encoding: gzip` gets `Content-Encoding: gzip` and, decoded as it arrives, exactly
//! the events every other client gets, each as soon as it is sent; a client that does not
//! ask gets the stream unchanged. A datum's repeated pushes cost far fewer bytes.

use std::io::Write;

use futures::StreamExt;
use serde_json::json;
use testkit::http::Client;
use testkit::DEADLINE;

/// A stream read raw: its headers, and its body bytes as they arrive (decoded when gzip).
struct RawStream {
    encoding: Option<String>,
    wire: usize,
    decoder: Option<flate2::write::GzDecoder<Vec<u8>>>,
    plain: Vec<u8>,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

impl RawStream {
    async fn open(base: &str, sid: &str, accept: Option<&str>) -> RawStream {
        let mut req = reqwest::Client::new().get(format!("{base}/api/v1/sessions/{sid}/events"));
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let encoding = res
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        let decoder = (encoding.as_deref() == Some("gzip"))
            .then(|| flate2::write::GzDecoder::new(Vec::new()));
        RawStream {
            encoding,
            wire: 0,
            decoder,
            plain: Vec::new(),
            body: res.bytes_stream().boxed(),
        }
    }

    /// The event text received so far.
    fn text(&self) -> String {
        let bytes = self.decoder.as_ref().map_or(&self.plain, |d| d.get_ref());
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The complete events received so far (the text after the last blank line is not).
    fn events(&self) -> Vec<String> {
        let text = self.text();
        let mut events: Vec<String> = text.split("\n\n").map(str::to_owned).collect();
        events.pop();
        events
    }

    /// Reads until `count` complete events start with `prefix`.
    async fn until(&mut self, prefix: &str, count: usize) {
        let read = async {
            while self
                .events()
                .iter()
                .filter(|e| e.starts_with(prefix))
                .count()
                < count
            {
                let chunk = self.body.next().await.expect("stream open").unwrap();
                self.wire += chunk.len();
                match &mut self.decoder {
                    Some(d) => {
                        d.write_all(&chunk).unwrap();
                        d.flush().unwrap();
                    }
                    None => self.plain.extend_from_slice(&chunk),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .unwrap_or_else(|_| panic!("{count} x {prefix:?} in {:?}", self.text()));
    }

    /// The push events received, as their `data:` JSON.
    fn pushes(&self) -> Vec<serde_json::Value> {
        self.events()
            .iter()
            .filter(|e| e.starts_with("event: push\n"))
            .map(|e| {
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }
}

#[tokio::test]
async fn a_client_that_asks_gets_a_gzip_stream_of_the_same_events_and_others_see_no_change() {
    let node = testkit::node::Node::start(&[]);
    let api = Client::new(&node.addr);
    let base = format!("http://{}", node.addr);
    let publisher = api.session(60).await;
    let addresses = |round: usize| -> Vec<String> {
        (0..500)
            .map(|i| format!("10.1.{}.{}:8080 round {round}", i / 250, i % 250))
            .collect()
    };
    let (st, v) = api
        .publish(
            &publisher,
            json!({"dataId": "gz.svc", "registerId": "p", "data": addresses(0)}),
        )
        .await;
    assert!(st.is_success(), "{v}");

    let mut streams = Vec::new();
    for accept in [Some("gzip, deflate"), None, Some("gzip;q=0")] {
        let sid = api.session(60).await;
        api.subscribe(
            &sid,
            json!({"dataId": "gz.svc", "registerId": format!("sub-{}", streams.len())}),
        )
        .await;
        let mut s = RawStream::open(&base, &sid, accept).await;
        s.until("event: push", 1).await;
        streams.push(s);
    }
    assert_eq!(streams[0].encoding.as_deref(), Some("gzip"));
    assert_eq!(streams[1].encoding, None, "not asked: no change");
    assert_eq!(streams[2].encoding, None, "gzip refused: no change");

    // Each change arrives on the compressed stream when it is sent (nothing held back by
    // the compressor), and pings do too.
    for round in 1..=5 {
        let (st, v) = api
            .publish(
                &publisher,
                json!({"dataId": "gz.svc", "registerId": "p", "data": addresses(round)}),
            )
            .await;
        assert!(st.is_success(), "{v}");
        for s in &mut streams {
            s.until("event: push", round + 1).await;
        }
    }
    streams[0].until(": ping", 1).await;

    // The same pushes on every stream, apart from the subscriber's registerId.
    let strip = |mut v: serde_json::Value| {
        v.as_object_mut().unwrap().remove("registerId");
        v
    };
    let gz: Vec<_> = streams[0].pushes().into_iter().map(strip).collect();
    let plain: Vec<_> = streams[1].pushes().into_iter().map(strip).collect();
    let refused: Vec<_> = streams[2].pushes().into_iter().map(strip).collect();
    assert_eq!(gz.len(), 6);
    assert_eq!(gz, plain);
    assert_eq!(refused, plain, "gzip refused: the plain stream's pushes");
    let (gz_wire, plain_wire) = (streams[0].wire, streams[1].wire);
    eprintln!("six pushes of 500 addresses: {gz_wire} bytes gzip, {plain_wire} bytes plain");
    assert!(gz_wire * 4 < plain_wire, "{gz_wire} vs {plain_wire}");
}
