//! The output folder of a run: one run at a time (an advisory lock), a
//! writability probe before training, the removal of temporary files a
//! killed run left behind, and the Ctrl-C flag a trainer stops on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::config::{TrainConfig, TrainError};
use super::say;

/// The files a run writes into its output folder.
pub const RUN_FILES: [&str; 3] = ["checkpoint.safetensors", "metrics.csv", "metrics.png"];

/// The lock file inside the output folder. It stays after the run: removing
/// it would let a run that opened it just before lock a file no longer in the
/// folder while a third run locks a new one.
pub const LOCK_FILE: &str = ".sparsenet-run.lock";

/// An advisory lock on a run's output folder, held until dropped. Another
/// process (or another trainer in this one) asking for it fails at once.
/// Advisory: only runs that ask for it are kept out (on Unix `flock`; on
/// other systems no lock is taken).
#[derive(Debug)]
pub struct RunLock {
    /// The open lock file; closing it releases the lock.
    _file: File,
}

/// Why a run's folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Another run holds the folder's lock.
    #[error(
        "{} is in use by another training run (it holds {}); wait for it to finish or \
         choose another output folder",
        .dir.display(),
        LOCK_FILE
    )]
    Busy {
        /// The output folder.
        dir: PathBuf,
    },
    /// A file could not be created or removed in the folder.
    #[error("{} is not writable ({what}): {source}", .dir.display())]
    NotWritable {
        /// The folder.
        dir: PathBuf,
        /// What was tried.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), creating its lock file.
    pub fn acquire(dir: &Path) -> Result<RunLock, RunDirError> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| RunDirError::NotWritable {
                dir: dir.to_path_buf(),
                what: format!("creating the lock file {}", path.display()),
                source,
            })?;
        lock_exclusive_now(&file).map_err(|source| {
            if source.kind() == std::io::ErrorKind::WouldBlock {
                RunDirError::Busy {
                    dir: dir.to_path_buf(),
                }
            } else {
                RunDirError::NotWritable {
                    dir: dir.to_path_buf(),
                    what: format!("locking {}", path.display()),
                    source,
                }
            }
        })?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(unix)]
fn lock_exclusive_now(file: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this `File` owns and keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn lock_exclusive_now(_: &File) -> std::io::Result<()> {
    Ok(())
}

/// Creates and removes a probe file in `dir`: a folder that refuses it would
/// otherwise be found out only when the first epoch's files are written.
pub fn check_writable(dir: &Path) -> Result<(), RunDirError> {
    let probe = dir.join(format!(".sparsenet-write-probe.{}", std::process::id()));
    let err = |what: &str, source| RunDirError::NotWritable {
        dir: dir.to_path_buf(),
        what: format!("{what} {}", probe.display()),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| err("creating", e))?;
    std::fs::remove_file(&probe).map_err(|e| err("removing", e))
}

/// Whether `name` is a temporary file of `write_atomically` for one of the
/// run's files: `.<file>.<random letters and digits>.tmp`.
fn is_our_temp_name(name: &str) -> bool {
    RUN_FILES.iter().any(|file| {
        name.strip_prefix('.')
            .and_then(|n| n.strip_prefix(file))
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|random| {
                !random.is_empty() && random.chars().all(|c| c.is_ascii_alphanumeric())
            })
    })
}

/// Removes the temporary files of the run's own files that a run killed
/// mid-write left in `dir` (regular files named as `write_atomically` names
/// them, nothing else, not in subfolders); returns their paths. Call it only
/// while holding the folder's [`RunLock`]: a running writer's file looks the
/// same.
pub fn remove_stale_temp_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(is_our_temp_name);
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

/// Set by the first SIGINT once [`install_sigint_handler`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes the first Ctrl-C (SIGINT) set the returned flag (a trainer given it
/// with [`Trainer::stop_on`](super::Trainer::stop_on) finishes its step,
/// writes a checkpoint and stops) and say so on stderr; a second Ctrl-C ends
/// the process at once with status 130. On systems without SIGINT the flag
/// is never set.
pub fn install_sigint_handler() -> std::io::Result<&'static AtomicBool> {
    #[cfg(unix)]
    {
        extern "C" fn on_sigint(_: libc::c_int) {
            // Only async-signal-safe calls here: an atomic swap, write, _exit.
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(130) };
            }
            let msg = b"\ninterrupted: finishing the current step and writing a checkpoint \
                        (Ctrl-C again to quit at once without it)\n";
            // SAFETY: write(2) of a static buffer is async-signal-safe.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        }
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        let previous = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SA_RESTART: reads and writes interrupted by the signal carry on.
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut())
        };
        if previous != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&INTERRUPTED)
}

/// Whether `flag` is set (a relaxed read suffices: it is only ever set).
pub(crate) fn is_set(flag: Option<&AtomicBool>) -> bool {
    flag.is_some_and(|f| f.load(Ordering::Relaxed))
}

/// The checks [`Trainer::new`](super::Trainer::new) makes of the run's output folder, made
/// before anything else so that a program can fail fast, before it loads
/// its data: another run holds the folder, it cannot be written, or it
/// holds another run's files (without `resume` or `overwrite`). Takes the
/// folder's lock and lets it go; removes temporary files a killed run left;
/// deletes nothing else. A folder that does not exist yet passes (the
/// trainer creates it).
pub fn check_out_dir(cfg: &TrainConfig) -> Result<(), TrainError> {
    if !cfg.out_dir.is_dir() {
        return Ok(());
    }
    prepare_out_dir(cfg, false).map(drop)
}

/// Makes the output folder (which exists) ready for the run: takes its
/// lock (held by the trainer), checks that files can be written there,
/// removes the temporary files a killed run left, and refuses to start a
/// new run over another run's files unless `cfg.overwrite` (which deletes
/// them when `delete`) or `cfg.resume`.
pub(crate) fn prepare_out_dir(cfg: &TrainConfig, delete: bool) -> Result<RunLock, TrainError> {
    let dir = &cfg.out_dir;
    let lock = RunLock::acquire(dir)?;
    check_writable(dir)?;
    let not_writable = |what: String| {
        move |source| {
            TrainError::RunDir(RunDirError::NotWritable {
                dir: dir.clone(),
                what,
                source,
            })
        }
    };
    let removed = remove_stale_temp_files(dir)
        .map_err(not_writable("removing stale temporary files".into()))?;
    if cfg.verbose && !removed.is_empty() {
        say(format_args!(
            "removed {} temporary file(s) left by an interrupted write: {}",
            removed.len(),
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let existing: Vec<String> = [cfg.checkpoint_path(), cfg.metrics_csv_path()]
        .iter()
        .filter(|p| p.exists())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if !cfg.resume && !existing.is_empty() {
        if !cfg.overwrite {
            return Err(TrainError::RunExists {
                dir: dir.clone(),
                files: existing,
            });
        }
        for name in RUN_FILES.iter().filter(|_| delete) {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(not_writable(format!("removing {}", path.display())))?;
            }
        }
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temp_names_are_recognised() {
        assert!(is_our_temp_name(".checkpoint.safetensors.Ab3xYz.tmp"));
        assert!(is_our_temp_name(".metrics.csv.q1w2e3.tmp"));
        assert!(is_our_temp_name(".metrics.png.ZZZZZZ.tmp"));
        for other in [
            "checkpoint.safetensors",
            ".checkpoint.safetensors.tmp",
            ".checkpoint.safetensors..tmp",
            ".weights.safetensors.Ab3xYz.tmp",
            ".metrics.csv.a/b.tmp",
            ".metrics.csv.Ab3xYz.tmp.keep",
            "notes.tmp",
        ] {
            assert!(!is_our_temp_name(other), "{other}");
        }
    }
}
