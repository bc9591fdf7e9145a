//! One output stream of the test script, captured to a file of bounded
//! size (`-max-output`): the head and the tail of the stream are kept, with
//! one marker line between them saying how much was cut.
//!
//! The stream is written to disk as it arrives, so memory stays small
//! whatever the script prints. The first half of the limit is written as
//! it comes; later bytes cycle over the second half of the same file, a
//! ring holding the most recent ones. Output within the limit is thus
//! already the finished file. Output beyond it is put in order at the end:
//! head, marker, then the ring from its oldest byte.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// How one stream is cut: `head` bytes from the start, `tail` from the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    head: u64,
    tail: u64,
}

impl OutputLimit {
    /// Keeps at most `limit` bytes: the first half (rounded up) and the
    /// last half.
    pub fn new(limit: u64) -> Self {
        let tail = limit / 2;
        OutputLimit {
            head: limit - tail,
            tail,
        }
    }

    /// Bytes kept at most.
    pub fn limit(&self) -> u64 {
        self.head + self.tail
    }

    /// The line put where output was cut, for a stream of `total` bytes.
    pub fn marker(&self, total: u64) -> String {
        format!(
            "\n[icyci: {} bytes of output cut here; the first {} and last {} bytes are kept]\n",
            total.saturating_sub(self.limit()),
            self.head,
            self.tail
        )
    }

    /// Where bytes `at .. at + len` of the stream go in the capture file:
    /// pieces of the chunk with their file offsets. Bytes beyond the head
    /// cycle over the ring `head .. head + tail`.
    fn placements(&self, at: u64, len: usize) -> Vec<(u64, Range<usize>)> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let position = at + done as u64;
            let left = (len - done) as u64;
            let (offset, room) = if position < self.head {
                (position, self.head - position)
            } else if self.tail == 0 {
                // Nothing of the end is kept (a limit of one byte).
                break;
            } else {
                let in_ring = (position - self.head) % self.tail;
                (self.head + in_ring, self.tail - in_ring)
            };
            // A chunk longer than the ring only leaves its last bytes.
            let take = left.min(room) as usize;
            pieces.push((offset, done..done + take));
            done += take;
        }
        pieces
    }

    /// Where the oldest byte of the ring is, for a stream of `total` bytes
    /// that went past the limit.
    fn ring_start(&self, total: u64) -> u64 {
        (total - self.head) % self.tail.max(1)
    }
}

/// Writes the cut form of a capture of `total` bytes (more than the limit)
/// from `captured` to `out`: head, marker, tail in stream order.
fn write_cut<R: Read + Seek, W: Write>(
    limit: &OutputLimit,
    total: u64,
    captured: &mut R,
    out: &mut W,
) -> io::Result<()> {
    let start = limit.ring_start(total);
    copy_range(captured, out, 0, limit.head)?;
    out.write_all(limit.marker(total).as_bytes())?;
    copy_range(captured, out, limit.head + start, limit.tail - start)?;
    copy_range(captured, out, limit.head, start)
}

fn copy_range<R: Read + Seek, W: Write>(
    from: &mut R,
    to: &mut W,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    from.seek(SeekFrom::Start(offset))?;
    if io::copy(&mut from.take(len), to)? == len {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "capture file shorter than what was written to it",
        ))
    }
}

/// How a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Bytes the stream carried.
    pub total: u64,
    /// Bytes left out of the capture file.
    pub cut: u64,
}

/// A stream being captured into `path` (bounded) and, on request, whole
/// into a second file.
#[derive(Debug)]
pub struct Capture {
    path: PathBuf,
    file: tokio::fs::File,
    cursor: u64,
    full: Option<tokio::fs::File>,
    limit: OutputLimit,
    total: u64,
}

impl Capture {
    /// Creates (truncates) the capture file, and the full copy when
    /// `full_path` is given.
    pub async fn create(path: &Path, full_path: Option<&Path>, limit: u64) -> io::Result<Self> {
        let file = tokio::fs::File::create(path).await?;
        let full = match full_path {
            Some(full_path) => Some(tokio::fs::File::create(full_path).await?),
            None => None,
        };
        Ok(Capture {
            path: path.to_owned(),
            file,
            cursor: 0,
            full,
            limit: OutputLimit::new(limit),
            total: 0,
        })
    }

    /// Adds the next bytes of the stream.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let at = self.total;
        self.total += chunk.len() as u64;
        let bounded = self.write_bounded(at, chunk).await;
        let full = match self.full.as_mut() {
            Some(full) => full.write_all(chunk).await,
            None => Ok(()),
        };
        bounded.and(full)
    }

    async fn write_bounded(&mut self, at: u64, chunk: &[u8]) -> io::Result<()> {
        for (offset, range) in self.limit.placements(at, chunk.len()) {
            if offset != self.cursor {
                self.file.seek(SeekFrom::Start(offset)).await?;
            }
            self.file.write_all(&chunk[range.clone()]).await?;
            self.cursor = offset + range.len() as u64;
        }
        Ok(())
    }

    /// Flushes the files and, when the stream went past the limit, puts the
    /// capture file in order with the marker line.
    pub async fn finish(mut self) -> io::Result<CaptureSummary> {
        if let Some(full) = self.full.as_mut() {
            full.flush().await?;
        }
        self.file.flush().await?;
        drop(self.file);
        let summary = CaptureSummary {
            total: self.total,
            cut: self.total.saturating_sub(self.limit.limit()),
        };
        if summary.cut > 0 {
            let (path, limit, total) = (self.path, self.limit, self.total);
            tokio::task::spawn_blocking(move || cut_in_place(&path, &limit, total))
                .await
                .map_err(io::Error::other)??;
        }
        Ok(summary)
    }
}

/// Replaces the capture file at `path` with its ordered, cut form.
fn cut_in_place(path: &Path, limit: &OutputLimit, total: u64) -> io::Result<()> {
    let ordered = path.with_extension("cut");
    let mut captured = io::BufReader::new(std::fs::File::open(path)?);
    let mut out = io::BufWriter::new(std::fs::File::create(&ordered)?);
    write_cut(limit, total, &mut captured, &mut out)?;
    out.into_inner().map_err(io::IntoInnerError::into_error)?;
    std::fs::rename(&ordered, path)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Streams `data` in chunks of `chunk` bytes through the placements
    /// into an in-memory file, then finishes it as [`Capture`] does.
    fn capture(limit: u64, data: &[u8], chunk: usize) -> Vec<u8> {
        let limit = OutputLimit::new(limit);
        let mut file = Vec::new();
        let mut at = 0u64;
        for piece in data.chunks(chunk) {
            for (offset, range) in limit.placements(at, piece.len()) {
                let offset = offset as usize;
                if file.len() < offset + range.len() {
                    file.resize(offset + range.len(), 0);
                }
                file[offset..offset + range.len()].copy_from_slice(&piece[range]);
            }
            at += piece.len() as u64;
        }
        let total = data.len() as u64;
        if total <= limit.limit() {
            return file;
        }
        assert_eq!(
            file.len() as u64,
            limit.limit(),
            "the file never grows past the limit"
        );
        let mut out = Vec::new();
        write_cut(&limit, total, &mut Cursor::new(file), &mut out).expect("in memory");
        out
    }

    fn expected(limit: u64, data: &[u8]) -> Vec<u8> {
        let limit = OutputLimit::new(limit);
        if data.len() as u64 <= limit.limit() {
            return data.to_vec();
        }
        let (head, tail) = (limit.head as usize, limit.tail as usize);
        let mut out = data[..head].to_vec();
        out.extend_from_slice(limit.marker(data.len() as u64).as_bytes());
        out.extend_from_slice(&data[data.len() - tail..]);
        out
    }

    #[test]
    fn head_and_tail_for_every_size_and_chunking() {
        let data: Vec<u8> = (0..200u32).map(|n| (n % 251) as u8).collect();
        for limit in [1, 2, 3, 7, 8, 64, 199, 200, 201] {
            for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 199, 200] {
                for chunk in [1, 3, 8, 64, 1000] {
                    assert_eq!(
                        capture(limit, &data[..len], chunk),
                        expected(limit, &data[..len]),
                        "limit {limit}, {len} bytes in chunks of {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn boundary_of_the_limit() {
        let exact = vec![b'x'; 1024];
        assert_eq!(
            capture(1024, &exact, 100),
            exact,
            "exactly the limit is kept whole"
        );
        let mut over = exact.clone();
        over.push(b'y');
        let cut = capture(1024, &over, 100);
        let marker =
            "\n[icyci: 1 bytes of output cut here; the first 512 and last 512 bytes are kept]\n";
        assert_eq!(cut.len(), 1024 + marker.len());
        assert_eq!(&cut[..512], &over[..512]);
        assert_eq!(&cut[512..512 + marker.len()], marker.as_bytes());
        assert_eq!(&cut[512 + marker.len()..], &over[over.len() - 512..]);
    }

    #[test]
    fn odd_limits_give_the_head_the_extra_byte() {
        let limit = OutputLimit::new(7);
        assert_eq!((limit.head, limit.tail), (4, 3));
        assert_eq!(limit.limit(), 7);
        assert_eq!(
            limit.marker(10),
            "\n[icyci: 3 bytes of output cut here; the first 4 and last 3 bytes are kept]\n"
        );
    }

    #[tokio::test]
    async fn capture_files_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, full) = (dir.path().join("stdout"), dir.path().join("full"));
        let data: Vec<u8> = (0..10_000u32).map(|n| (n % 97) as u8).collect();
        let mut capture = Capture::create(&path, Some(&full), 1000)
            .await
            .expect("create");
        for piece in data.chunks(333) {
            capture.write(piece).await.expect("write");
        }
        let summary = capture.finish().await.expect("finish");
        assert_eq!(
            summary,
            CaptureSummary {
                total: 10_000,
                cut: 9_000
            }
        );
        assert_eq!(std::fs::read(&path).expect("read"), expected(1000, &data));
        assert_eq!(std::fs::read(&full).expect("read"), data);
        assert!(!path.with_extension("cut").exists());
    }
}
