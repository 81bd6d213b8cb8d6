//! End-to-end tests: a real host on a loopback socket, spoken to over HTTP
//! exactly as `API.md` describes.

mod common;

mod bank_account;
mod cluster;
mod commands;
mod durability;
mod live;
mod plugins;
mod polyglot;
mod postgres;
mod projection_lifecycle;
mod projections;
mod sagas;
mod sandbox;
mod slow_clients;
mod spin_load;
mod streams;
mod templates;
mod undeploy;
mod workflow;
