//! The bus folder: where each kind of file lives, how it is written
//! (atomically and, when it matters, durably) and how it is read (never
//! following a link, never blocking on a FIFO, never reading more than a cap).

mod io;
mod layout;

pub use io::{
    ReadError, WriteBatch, list, list_by_inode, read_capped, read_json, remove_dir_all_quiet,
    write_atomic, write_atomic_data,
};
pub use layout::{Bus, Folder};

/// Whether a name in a bus folder is someone's file in the making: names
/// starting with `.` or ending in `.tmp` are skipped by every reader.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}
