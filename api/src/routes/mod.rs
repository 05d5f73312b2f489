//! Route modules, one per URL prefix of the original.

pub mod account;
pub mod auth;
pub mod config;
pub mod create_from_template;
pub mod dotfiles;
pub mod events;
pub mod folders;
pub mod image;
pub mod logs;
pub mod manager;
pub mod resource;
pub mod rest_cmd;
pub mod root;
pub mod scaling_groups;
pub mod scheduler;
pub mod session;
pub mod session_extra;
pub mod stream;
pub mod templates;
pub mod usage;
