//! Helpers shared by the tests that run child processes (`process_crash`, `follow`).

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};

/// Reads the child's stdout on a thread and sends every complete line carrying `mark`
/// (the text after the marker). A line cut short by a kill has no newline and is dropped:
/// it acknowledged nothing.
pub fn read_marked_lines(child: &mut Child, mark: &'static str) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) if buf.last() != Some(&b'\n') => return, // torn by a kill
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    if let Some(at) = line.find(mark)
                        && tx.send(line[at + mark.len()..].to_string()).is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Collects the child's stderr on a thread (for failure messages).
pub fn read_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("piped stderr");
    thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}
