//! ham's cluster agent (`ham-cluster`): its etcd v3 client and the membership view. The
//! agent is a process ham supervises; ham, not the agent, holds every deadline that keeps
//! the cluster safe.

pub mod etcd;
pub mod fence;
pub mod placement;
pub mod view;
