//! The benchmark harness's GET client (benches/compare/http_get.rs), which
//! the request/response scenario drives against every peer: its requests,
//! and its reading of responses split anywhere. (The bench target has no
//! test harness, so its client is tested from here.)

#[path = "../benches/compare/http_get.rs"]
mod http_get;

use std::time::Duration;

use http_get::{Answer, GetConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers each request with the next of `responses`, written in the
/// pieces its `|`s mark, then closes. Returns what the client made of each,
/// and the requests it sent.
async fn exchange(
    responses: &'static [&'static str],
    close: bool,
) -> (Vec<Result<Answer, String>>, Vec<String>) {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(async move {
        let mut requests = Vec::new();
        for response in responses {
            let mut request = vec![0u8; 4096];
            let n = server.read(&mut request).await.unwrap_or(0);
            requests.push(String::from_utf8_lossy(&request[..n]).into_owned());
            for piece in response.split('|') {
                let _ = server.write_all(piece.as_bytes()).await;
                let _ = server.flush().await;
                tokio::task::yield_now().await;
            }
        }
        requests
    });
    let mut connection = GetConnection::new(client, "/static", "*/*", close);
    let mut answers = Vec::new();
    for _ in responses {
        let answer = tokio::time::timeout(Duration::from_secs(5), connection.get()).await;
        answers.push(answer.unwrap_or_else(|_| Err("timed out".into())));
    }
    drop(connection);
    (answers, serve.await.unwrap_or_default())
}

fn ok(status: u16, closes: bool) -> Result<Answer, String> {
    Ok(Answer { status, closes })
}

/// Each response is read exactly to its end: a byte left over, or one
/// taken from the next response, would break the next head (or hang).
#[tokio::test]
async fn reads_length_and_chunked_bodies_split_anywhere() {
    let (answers, requests) = exchange(
        &[
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Len|gth: 5\r\n\r|\nhel|lo",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r|\nde\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\ntrailer: 1\r|\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        ],
        false,
    )
    .await;
    assert_eq!(
        answers,
        [
            ok(200, false),
            ok(200, false),
            ok(200, false),
            ok(404, false),
            ok(204, false),
            ok(200, true),
        ]
    );
    assert_eq!(requests.len(), 6);
    for request in &requests {
        assert_eq!(
            request,
            "GET /static HTTP/1.1\r\nhost: localhost\r\naccept: */*\r\ncache-control: no-cache\r\n\r\n"
        );
    }
}

#[tokio::test]
async fn a_body_until_close_and_the_close_request() {
    let (answers, requests) = exchange(&["HTTP/1.0 200 OK\r\n\r\nuntil the end"], true).await;
    assert_eq!(answers, [ok(200, true)]);
    assert_eq!(
        requests,
        ["GET /static HTTP/1.1\r\nhost: localhost\r\naccept: */*\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n"]
    );
}

#[tokio::test]
async fn a_short_body_and_a_bad_chunk_are_errors() {
    let (answers, _) = exchange(
        &["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
        false,
    )
    .await;
    assert_eq!(
        answers,
        [Err(
            "connection closed before the response ended".to_string()
        )]
    );
    let (answers, _) = exchange(
        &["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
        false,
    )
    .await;
    assert_eq!(answers, [Err("bad chunk size \"zz\"".to_string())]);
}
