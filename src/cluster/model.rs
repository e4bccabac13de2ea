//! The cluster objects as DNS sees them: Services and EndpointSlices reduced
//! to the fields the Kubernetes DNS specification uses, and nothing else.
//!
//! Owns: the reduced types and the conversion from Kubernetes objects. Every
//! source (static file, direct watch, hub) produces these; the index consumes
//! them. Must not: keep any other field ("every field costs memory at scale",
//! CoreDNS): no labels, annotations, managedFields, selectors or topology.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why an object could not be reduced; the source skips it and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReduceError {
    #[error("object has no {0}")]
    Missing(&'static str),
    #[error("{field} has an invalid value {value:?}")]
    Invalid { field: &'static str, value: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Result<Protocol, ReduceError> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(ReduceError::Invalid {
                field: "protocol",
                value: other.into(),
            }),
        }
    }

    /// The SRV label, `_tcp` etc. (RFC 2782).
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "_tcp",
            Protocol::Udp => "_udp",
            Protocol::Sctp => "_sctp",
        }
    }
}

/// A named port (unnamed ports have no SRV record in the spec).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// ClusterIP, NodePort, LoadBalancer: records point at the cluster IPs (all families).
    ClusterIp(Box<[IpAddr]>),
    /// `clusterIP: None`: records point at the endpoints.
    Headless,
    /// A CNAME to an external name.
    ExternalName(Box<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub kind: ServiceKind,
    pub ports: Box<[Port]>,
    pub publish_not_ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Box<[IpAddr]>,
    pub hostname: Option<Box<str>>,
    pub ready: bool,
    /// Terminating endpoints are excluded from DNS even when "ready" (DESIGN §4).
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// The Service this slice belongs to (its `kubernetes.io/service-name` label).
    pub service: Box<str>,
    pub ports: Box<[Port]>,
    pub endpoints: Box<[Endpoint]>,
}

/// One change to the cluster state, in the order a source saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    UpsertService(Service),
    DeleteService { namespace: Box<str>, name: Box<str> },
    UpsertSlice(EndpointSlice),
    DeleteSlice { namespace: Box<str>, name: Box<str> },
}

fn meta_names(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(Box<str>, Box<str>), ReduceError> {
    let ns = meta
        .namespace
        .as_deref()
        .ok_or(ReduceError::Missing("metadata.namespace"))?;
    let name = meta.name.as_deref().ok_or(ReduceError::Missing("metadata.name"))?;
    Ok((ns.into(), name.into()))
}

fn parse_ip(field: &'static str, s: &str) -> Result<IpAddr, ReduceError> {
    s.parse().map_err(|_| ReduceError::Invalid { field, value: s.into() })
}

fn port_number(field: &'static str, p: i32) -> Result<u16, ReduceError> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or(ReduceError::Invalid {
        field,
        value: p.to_string(),
    })
}

impl Service {
    /// The namespace and name a delete event carries.
    pub fn key_of(svc: &K8sService) -> Result<(Box<str>, Box<str>), ReduceError> {
        meta_names(&svc.metadata)
    }

    pub fn reduce(svc: &K8sService) -> Result<Service, ReduceError> {
        let (namespace, name) = meta_names(&svc.metadata)?;
        let spec = svc.spec.as_ref().ok_or(ReduceError::Missing("spec"))?;
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec
                .external_name
                .as_deref()
                .ok_or(ReduceError::Missing("spec.externalName"))?;
            ServiceKind::ExternalName(target.trim_end_matches('.').into())
        } else {
            match spec.cluster_ip.as_deref() {
                Some("None") => ServiceKind::Headless,
                None | Some("") => return Err(ReduceError::Missing("spec.clusterIP")),
                Some(primary) => {
                    // clusterIPs holds every family (dual-stack); clusterIP is its first entry.
                    let ips = match spec.cluster_ips.as_deref() {
                        Some(list) if !list.is_empty() => list
                            .iter()
                            .map(|s| parse_ip("spec.clusterIPs", s))
                            .collect::<Result<_, _>>()?,
                        _ => vec![parse_ip("spec.clusterIP", primary)?],
                    };
                    ServiceKind::ClusterIp(ips.into())
                }
            }
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty())?;
                Some(Ok(Port {
                    name: name.into(),
                    protocol: match Protocol::parse(p.protocol.as_deref()) {
                        Ok(proto) => proto,
                        Err(e) => return Some(Err(e)),
                    },
                    port: match port_number("spec.ports.port", p.port) {
                        Ok(n) => n,
                        Err(e) => return Some(Err(e)),
                    },
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Service {
            namespace,
            name,
            kind,
            ports: ports.into(),
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        })
    }
}

impl EndpointSlice {
    pub fn key_of(slice: &K8sSlice) -> Result<(Box<str>, Box<str>), ReduceError> {
        meta_names(&slice.metadata)
    }

    pub fn reduce(slice: &K8sSlice) -> Result<EndpointSlice, ReduceError> {
        let (namespace, name) = meta_names(&slice.metadata)?;
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .ok_or(ReduceError::Missing("the kubernetes.io/service-name label"))?;
        // FQDN slices carry names, not addresses: nothing for DNS to serve.
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return Err(ReduceError::Invalid {
                field: "addressType",
                value: slice.address_type.clone(),
            });
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty())?;
                let port = p.port?;
                Some((name, p.protocol.as_deref(), port))
            })
            .map(|(name, proto, port)| {
                Ok(Port {
                    name: name.into(),
                    protocol: Protocol::parse(proto)?,
                    port: port_number("ports.port", port)?,
                })
            })
            .collect::<Result<Vec<_>, ReduceError>>()?;
        let endpoints = slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref();
                // The API documents a missing `ready` as "ready" (unknown state is serving).
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let addresses = e
                    .addresses
                    .iter()
                    .map(|a| parse_ip("endpoints.addresses", a))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Endpoint {
                    addresses: addresses.into(),
                    hostname: e.hostname.as_deref().filter(|h| !h.is_empty()).map(Into::into),
                    ready,
                    terminating,
                })
            })
            .collect::<Result<Vec<_>, ReduceError>>()?;
        Ok(EndpointSlice {
            namespace,
            name,
            service: service.as_str().into(),
            ports: ports.into(),
            endpoints: endpoints.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> K8sService {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reduces_services_of_each_kind() {
        let s = Service::reduce(&svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"big": "x"}},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"],
                     "ports": [{"name": "http", "port": 80}, {"port": 81}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        })))
        .unwrap();
        assert_eq!(
            s.kind,
            ServiceKind::ClusterIp(vec!["10.96.0.5".parse().unwrap(), "fd00::5".parse().unwrap()].into())
        );
        assert_eq!(s.ports.len(), 2, "unnamed ports have no SRV");
        assert_eq!(s.ports[1].protocol, Protocol::Udp);

        let h = Service::reduce(&svc(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
        })))
        .unwrap();
        assert_eq!((h.kind, h.publish_not_ready), (ServiceKind::Headless, true));

        let e = Service::reduce(&svc(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "api.example.com."}
        })))
        .unwrap();
        assert_eq!(e.kind, ServiceKind::ExternalName("api.example.com".into()));

        let bad = svc(serde_json::json!({"metadata": {"name": "x", "namespace": "y"}, "spec": {"clusterIP": "nope"}}));
        assert!(matches!(Service::reduce(&bad), Err(ReduceError::Invalid { .. })));
    }

    #[test]
    fn reduces_slices() {
        let slice: K8sSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": true, "terminating": true}}
            ]
        }))
        .unwrap();
        let s = EndpointSlice::reduce(&slice).unwrap();
        assert_eq!(&*s.service, "db");
        assert_eq!(s.ports[0].port, 5432);
        assert_eq!(s.endpoints.len(), 3);
        assert!(s.endpoints[0].ready && !s.endpoints[1].ready && s.endpoints[2].terminating);
        assert_eq!(s.endpoints[0].hostname.as_deref(), Some("db-0"));
    }
}
