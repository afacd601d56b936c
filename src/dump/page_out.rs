//! The dump's page sink, chosen from its options: local files (plain, with the splice fast
//! path, or packed) or a page server. See [`crate::pages`] for the pipeline.

use super::error::{DumpError, Result};
use super::options::DumpOptions;
pub use super::options::PageServerAddr;
use crate::pages::client::PageServerSink;
use crate::pages::record::RecordedSink;
use crate::pages::sink::LocalSink;
use crate::pages::PageSink;

/// The sink for `opts`: connects to the page server now, so that an unreachable server fails
/// the dump before anything is frozen.
pub fn open_sink(opts: &DumpOptions) -> Result<Box<dyn PageSink>> {
    let err = |what: String| DumpError::new("page-server", opts.pid, None, what);
    match &opts.page_server {
        None => Ok(Box::new(LocalSink::new(
            &opts.images_dir,
            1,
            opts.pack.clone(),
        ))),
        Some(_) if opts.pack.active() => Err(err(
            "--compress and --encrypt-key apply to the files written: give them to the page \
             server (the page-server protocol carries plain pages)"
                .into(),
        )),
        Some(ps) => match ps.ps_socket {
            Some(fd) => {
                let sock = crate::sys::fds::inherited(fd).map_err(|e| {
                    DumpError::new(
                        "page-server",
                        opts.pid,
                        Some(e as i32),
                        format!("--ps-socket {fd}"),
                    )
                })?;
                let addr = Some(ps.address.as_str()).filter(|a| !a.is_empty());
                PageServerSink::over_socket(sock, ps.tls.as_ref(), addr)
                    .map(|s| recorded(Box::new(s), opts))
                    .map_err(|e| err(e.to_string()))
            }
            None => PageServerSink::connect(&ps.address, ps.port, ps.tls.as_ref())
                .map(|s| recorded(Box::new(s), opts))
                .map_err(|e| err(e.to_string())),
        },
    }
}

/// A page server keeps the pagemaps; the dump records what it sent for the next dump of a
/// chain (`DIR/sent-pagemap-ID.img`, see [`crate::pages::record`]).
fn recorded(sink: Box<dyn PageSink>, opts: &DumpOptions) -> Box<dyn PageSink> {
    Box::new(RecordedSink::new(sink, &opts.images_dir))
}
