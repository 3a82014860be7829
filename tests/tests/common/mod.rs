//! Helpers shared by the dashboard, rule and live-metrics tests (`mod common;` in each). Each test
//! binary uses a different part of them.
#![allow(dead_code)]

pub mod promql;
