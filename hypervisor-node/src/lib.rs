//! `atrium-node`: the node agent of an Atrium KVM host.
//!
//! - [`image`]: guest images built from Debian packages, and the images a node holds;
//! - [`runtime`]: VM runtimes behind one trait (`qemu` here; `builtin` joins later);
//! - [`vm`]: the node's VMs (create, watch, stop, delete), over a runtime, with a cgroup
//!   ([`cgroup`]) and a link to the guest agent ([`agent_link`]);
//! - [`api`]: the HTTP API for the broker and the display proxy; [`heartbeat`] to the broker;
//! - [`server`], [`run`], [`bench`]: the `serve`, `run` and `bench` commands;
//! - [`kvm`]: what `/dev/kvm` is, and which accelerator and runtime follow from it.

pub mod accounts;
pub mod agent_link;
pub mod api;
pub mod bench;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod heartbeat;
pub mod image;
pub mod kvm;
pub mod library;
pub mod metrics;
pub mod run;
pub mod runtime;
pub mod server;
pub mod vm;
