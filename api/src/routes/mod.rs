//! Route modules, one per URL prefix of the original.

pub mod auth;
pub mod config;
pub mod events;
pub mod image;
pub mod manager;
pub mod resource;
pub mod root;
pub mod scaling_groups;
pub mod session;
pub mod session_extra;
pub mod stream;
pub mod usage;
