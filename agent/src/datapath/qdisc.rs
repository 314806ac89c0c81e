//! The interfaces with an ingress-side qdisc (`ingress` or `clsact`): its filters run after
//! TCX programs, so a program that redirects a packet there skips them (the bandwidth
//! plugin's egress shaping is such a filter, a mirred redirect to an ifb device). One
//! synchronous netlink dump (`RTM_GETQDISC`), as `tc qdisc show` makes, for all interfaces at
//! once; callers run both in the agent's async context and in the lab daemon's plain threads.
use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The indices of the interfaces (of the calling thread's network namespace) that have an
/// `ingress` or `clsact` qdisc.
pub fn ingress_qdiscs() -> Result<BTreeSet<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetQueueDiscipline(
            TcMessage::with_index(0),
        )),
    );
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).context("sending RTM_GETQDISC")?;
    let mut found = BTreeSet::new();
    loop {
        let (data, _) = socket.recv_from_full().context("reading qdiscs")?;
        let mut at = 0;
        while at < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .context("parsing a qdisc message")?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => bail!("RTM_GETQDISC: {e:?}"),
                // Both kinds sit at the same parent (TC_H_INGRESS).
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(q))
                    if q.header.parent == TcHandle::INGRESS =>
                {
                    found.insert(q.header.index as u32);
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
