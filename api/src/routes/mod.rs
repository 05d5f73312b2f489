//! Route modules, one per URL prefix of the original.

pub mod root;
