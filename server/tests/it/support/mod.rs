//! The server's own test helpers: the binary as a child process, and the demo stack.
pub mod binary;
pub mod demo_stack;
