//! kubectl's streaming protocols, server side. kube-apiserver upgrades `exec`, `attach`
//! and `portforward` requests to one of them and bridges the streams to the kubelet.
//!
//! - [`spdy`]: SPDY/3.1 frames and header compression; [`session`]: a SPDY session
//!   whose streams the client opens.
//! - [`remotecommand`]: exec/attach over SPDY or WebSocket, as one [`remotecommand::Streams`].
//! - [`portforward`]: port-forward streams over SPDY, also tunneled in a WebSocket.
//! - [`upgrade`]: the HTTP side: which protocol a request asks for, the `101` answer.

pub mod portforward;
pub mod remotecommand;
pub mod session;
pub mod spdy;
pub mod upgrade;
