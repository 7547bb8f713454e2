//! `archive_command` (the archiver thread) and `restore_command`.
