//! The protocol against a fake monitor on a real socket (not a VM).

use super::*;
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;

/// A monitor that answers every command with `{"cmd": name}`, but holds
/// back its answer to `slow` (all of it) or `hang` (all but its first
/// bytes) until the next command arrives: the client has given up on it by
/// then, and the late bytes come just before the next answer.
async fn fake_monitor(listener: UnixListener) {
    let (stream, _) = listener.accept().await.unwrap();
    let (rd, mut wr) = stream.into_split();
    wr.write_all(b"{\"QMP\": {\"version\": {}}}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(rd).lines();
    let mut held = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let cmd: Value = serde_json::from_str(&line).unwrap();
        let name = cmd["execute"].as_str().unwrap().to_string();
        let reply = json!({"return": {"cmd": name}, "id": cmd["id"]}).to_string() + "\n";
        let late = std::mem::take(&mut held);
        wr.write_all(late.as_bytes()).await.unwrap();
        match name.as_str() {
            "slow" => held = format!("{{\"event\": \"STOP\"}}\n{reply}"),
            "hang" => {
                let (head, tail) = reply.split_at(5);
                wr.write_all(head.as_bytes()).await.unwrap();
                held = tail.to_string();
            }
            _ => wr.write_all(reply.as_bytes()).await.unwrap(),
        }
    }
}

async fn client() -> (Qmp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(fake_monitor(listener));
    let qmp = Qmp::connect_with_timeout(&path, Duration::from_millis(100))
        .await
        .unwrap();
    (qmp, dir)
}

#[tokio::test]
async fn a_late_reply_is_not_the_answer_to_the_next_command() {
    let (qmp, _dir) = client().await;
    assert!(matches!(
        qmp.execute("slow", json!({})).await,
        Err(QmpError::Timeout(..))
    ));
    // The monitor answers `slow` first; each command gets its own reply.
    for name in ["query-status", "cont"] {
        let got = qmp.execute(name, json!({})).await.unwrap();
        assert_eq!(got, json!({"cmd": name}));
    }
}

#[tokio::test]
async fn a_reply_line_cut_by_a_timeout_is_read_whole_later() {
    let (qmp, _dir) = client().await;
    assert!(matches!(
        qmp.execute("hang", json!({})).await,
        Err(QmpError::Timeout(..))
    ));
    let got = qmp.execute("query-status", json!({})).await.unwrap();
    assert_eq!(got, json!({"cmd": "query-status"}));
}
