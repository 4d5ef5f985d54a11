//! A health-checked async connection pool.
#![allow(dead_code)]
mod core;
