//! The dummy interface that holds the node-local listen address (NodeLocal
//! DNSCache's `nodelocaldns`), over rtnetlink.
//!
//! Owns: creating the interface, bringing it up and adding each address as a
//! host route (/32, /128; IPv6 without duplicate address detection, so it is
//! usable at once), reading them back, and deleting the interface. Must not:
//! touch an interface of another kind that happens to have the same name
//! (`ensure` fails instead), or delete anything but that one interface.
//!
//! A kernel built without the dummy driver (CONFIG_DUMMY; some minimal VM
//! kernels, this project's CI among them) gets an `ifb` interface instead:
//! also virtual, also never receiving anything from outside, and it holds
//! local addresses the same way.
//!
//! Every call opens its own netlink socket in the calling thread's network
//! namespace and closes it before returning.

use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, LinkDummy, LinkIfb, LinkUnspec};

use super::NodeError;

/// Creates the dummy interface `name` unless it exists, brings it up and adds
/// every address it does not hold yet. Idempotent. Returns its index.
pub async fn ensure(name: &str, addresses: &[IpAddr]) -> Result<u32, NodeError> {
    let (handle, connection) = connect()?;
    let result = async {
        let index = match find(&handle, name).await? {
            Some((index, kind)) => {
                if !matches!(kind, Some(InfoKind::Dummy | InfoKind::Ifb)) {
                    return Err(netlink_err(
                        format!("interface {name} exists and is not a dummy interface ({kind:?})"),
                        io::ErrorKind::AlreadyExists.into(),
                    ));
                }
                index
            }
            None => {
                let mut created = handle.link().add(LinkDummy::new(name).build()).execute().await;
                if created.as_ref().err().and_then(errno) == Some(libc::EOPNOTSUPP) {
                    tracing::warn!(
                        interface = name,
                        "the kernel has no dummy interfaces; using an ifb interface"
                    );
                    created = handle.link().add(LinkIfb::new(name).build()).execute().await;
                }
                // EEXIST: another agent created it between our look and our add.
                if let Err(e) = created {
                    if errno(&e) != Some(libc::EEXIST) {
                        return Err(rt_err(format!("creating dummy interface {name}"), e));
                    }
                }
                find(&handle, name)
                    .await?
                    .ok_or_else(|| {
                        netlink_err(
                            format!("interface {name} vanished after creation"),
                            io::ErrorKind::NotFound.into(),
                        )
                    })?
                    .0
            }
        };
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| rt_err(format!("bringing {name} up"), e))?;
        let held = list(&handle, index).await?;
        for &address in addresses.iter().filter(|a| !held.contains(a)) {
            let prefix = if address.is_ipv4() { 32 } else { 128 };
            let mut request = handle.address().add(index, address, prefix).replace();
            if address.is_ipv6() {
                request
                    .message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request
                .execute()
                .await
                .map_err(|e| rt_err(format!("adding {address}/{prefix} to {name}"), e))?;
        }
        Ok(index)
    }
    .await;
    connection.abort();
    result
}

/// The addresses on interface `name`, or None if there is no such interface.
pub async fn addresses(name: &str) -> Result<Option<Vec<IpAddr>>, NodeError> {
    let (handle, connection) = connect()?;
    let result = async {
        match find(&handle, name).await? {
            Some((index, _)) => Ok(Some(list(&handle, index).await?)),
            None => Ok(None),
        }
    }
    .await;
    connection.abort();
    result
}

/// Deletes interface `name` (its addresses go with it). Returns whether it existed.
pub async fn remove(name: &str) -> Result<bool, NodeError> {
    let (handle, connection) = connect()?;
    let result = async {
        let Some((index, _)) = find(&handle, name).await? else {
            return Ok(false);
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(rt_err(format!("deleting interface {name}"), e)),
        }
    }
    .await;
    connection.abort();
    result
}

fn connect() -> Result<(Handle, tokio::task::JoinHandle<()>), NodeError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| netlink_err("opening a netlink socket".into(), source))?;
    Ok((handle, tokio::spawn(connection)))
}

/// The index and kind of interface `name`, if it exists.
async fn find(handle: &Handle, name: &str) -> Result<Option<(u32, Option<InfoKind>)>, NodeError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let kind = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.clone()),
                    _ => None,
                }),
                _ => None,
            });
            Ok(Some((link.header.index, kind)))
        }
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(rt_err(format!("looking up interface {name}"), e)),
    }
}

async fn list(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, NodeError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| rt_err(format!("listing addresses of interface {index}"), e))?;
    let mut out = Vec::new();
    for m in messages
        .iter()
        .filter(|m| m.header.index == index && !is_link_local_v6(m))
    {
        // IPv4 reports the address as Local (Address is the peer); IPv6 as Address.
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// fe80::/10, which the kernel adds to every IPv6-capable interface by itself.
fn is_link_local_v6(m: &rtnetlink::packet_route::address::AddressMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80))
}

/// The errno of a netlink NACK, positive.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn rt_err(op: String, e: rtnetlink::Error) -> NodeError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    };
    netlink_err(op, source)
}

fn netlink_err(op: String, source: io::Error) -> NodeError {
    NodeError::Netlink { op, source }
}
