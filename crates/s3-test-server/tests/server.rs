//! The server process starts on a free port, answers, injects the faults it is asked for, and
//! stops on drop. (Being an integration test of this package also makes `cargo test` build the
//! `bv-s3-server` binary that the other packages' tests start.)
use std::io::{Read, Write};
use std::net::TcpStream;

use blockvault_s3_test_server::{Options, S3Server};

fn get(endpoint: &str, path: &str) -> String {
    let addr = endpoint.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn starts_on_a_free_port_refuses_unsigned_requests_and_injects_faults() {
    let s = S3Server::start("bucket-a");
    assert!(s.root().join("bucket-a").is_dir());
    let answer = get(s.endpoint(), "/bucket-a");
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "unsigned request: {answer}"
    );

    let f = S3Server::start_with(Options {
        buckets: vec!["bucket-b".into()],
        fail_rate: 1.0,
        ..Options::default()
    });
    for _ in 0..10 {
        let a = get(f.endpoint(), "/bucket-b");
        assert!(a.is_empty() || a.contains("SlowDown"), "{a}");
    }
    assert_eq!(f.injected_faults(), 10, "{}", f.log());
}
