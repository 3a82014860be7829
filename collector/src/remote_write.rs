//! remote_write
