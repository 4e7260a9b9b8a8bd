//! Whole files to and from the guest, streamed so a file of any size
//! crosses with bounded host memory.

use ember_agent_protocol::{Frame, FrameKind, GuestMessage, HostMessage, MAX_PAYLOAD};

use super::client::{decode_reply, next_reply, unexpected, AgentClient};
use super::session::Flow;
use super::AgentError;

impl AgentClient {
    pub async fn write_file(
        &self,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<u64, AgentError> {
        self.write_file_from(path, contents, mode).await
    }

    /// Like [`write_file`](Self::write_file), streaming from `source`.
    pub async fn write_file_from<R>(
        &self,
        path: &str,
        mut source: R,
        mode: u32,
    ) -> Result<u64, AgentError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let msg = HostMessage::WriteFile {
            path: path.to_string(),
            mode,
        };
        let (channel, mut rx, _guard) = self.start_request(Flow::Reply, &msg).await?;
        let mut chunk = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = source.read(&mut chunk).await.map_err(AgentError::Io)?;
            if n == 0 {
                break;
            }
            // An early error (bad path) ends the transfer at once.
            if let Some(frame) = rx.try_recv() {
                return Err(reply_error(&frame));
            }
            self.send(Frame::new(FrameKind::Data, channel, chunk[..n].to_vec()))
                .await?;
        }
        self.send(Frame::new(FrameKind::Eof, channel, Vec::new()))
            .await?;
        match next_reply(&mut rx).await? {
            GuestMessage::FileWritten { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, AgentError> {
        let msg = HostMessage::ReadFile {
            path: path.to_string(),
            max_bytes,
        };
        let (_, mut rx, _guard) = self.start_request(Flow::Bulk, &msg).await?;
        let too_large = || AgentError::TooLarge {
            what: "file",
            limit: max_bytes,
        };
        let mut data = Vec::new();
        let mut expected = None;
        loop {
            let frame = rx.recv().await?;
            match frame.kind {
                FrameKind::Control => match decode_reply(&frame)? {
                    GuestMessage::FileStart { size } if size <= max_bytes => {
                        expected = Some(size);
                        // What the guest claims is only a hint: cap it.
                        let hint = size.min(MAX_PAYLOAD as u64 * 16);
                        data.reserve(usize::try_from(hint).unwrap_or(0));
                    }
                    GuestMessage::FileStart { .. } => return Err(too_large()),
                    other => return Err(unexpected(other)),
                },
                FrameKind::Data => {
                    if data.len() as u64 + frame.payload.len() as u64 > max_bytes {
                        return Err(too_large());
                    }
                    data.extend_from_slice(&frame.payload);
                }
                FrameKind::Eof => {
                    return match expected {
                        Some(_) => Ok(data),
                        None => Err(AgentError::Protocol("file data without FileStart".into())),
                    }
                }
                FrameKind::Reset => return Err(AgentError::Disconnected),
                _ => {}
            }
        }
    }
}

fn reply_error(frame: &Frame) -> AgentError {
    match decode_reply(frame) {
        Err(e) => e,
        Ok(m) => unexpected(m),
    }
}
