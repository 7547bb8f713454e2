//! The Redis-protocol (RESP2) front end: listener, sessions, commands.
