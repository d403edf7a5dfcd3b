//! Answering one query from the [`Records`]: authoritative answers for the cluster zone
//! (NXDOMAIN or NODATA with the zone's SOA when there is nothing), PTR for cluster
//! addresses, and "not ours" for everything else (the server forwards those).

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::records::{Records, Target};

/// The TTL of every answer (kubeadm's Corefile: `ttl 30`).
pub const TTL: u32 = 30;

/// What the zone says about a name.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Records for the answer section, and helpful extras for the additional one.
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists, without records of this type.
    NoData,
    /// No such name in the zone.
    NxDomain,
    /// Not a name of the zone (nor a cluster address's PTR).
    NotOurs,
}

/// The cluster zone (`cluster.local`).
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lower case, without the final dot.
    pub domain: String,
}

/// A fully qualified name (`s` with or without its final dot).
fn name(s: &str) -> Name {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).unwrap_or_else(|_| Name::root())
}

fn a(owner: &str, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), TTL, RData::A(A(ip)))
}

impl Zone {
    pub fn new(domain: &str) -> Zone {
        Zone {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// The zone's SOA record (CoreDNS's form).
    pub fn soa(&self, serial: u32) -> Record {
        let d = &self.domain;
        Record::from_rdata(
            name(d),
            TTL,
            RData::SOA(SOA::new(
                name(&format!("ns.dns.{d}")),
                name(&format!("hostmaster.{d}")),
                serial,
                7200,
                1800,
                86400,
                TTL,
            )),
        )
    }

    /// Resolves `qname` (lower case, no final dot) for `qtype`.
    pub fn resolve(&self, recs: &Records, qname: &str, qtype: RecordType) -> Outcome {
        if let Some(rev) = qname.strip_suffix(".in-addr.arpa") {
            return self.reverse(recs, rev, qtype);
        }
        let Some(rel) = qname.strip_suffix(self.domain.as_str()).and_then(|r| {
            if r.is_empty() {
                Some("")
            } else {
                r.strip_suffix('.')
            }
        }) else {
            return Outcome::NotOurs;
        };
        let labels: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('.').collect()
        };
        let d = &self.domain;
        let found = |answers: Vec<Record>, additionals: Vec<Record>| {
            if answers.is_empty() {
                Outcome::NoData
            } else {
                Outcome::Found {
                    answers,
                    additionals,
                }
            }
        };
        match labels.as_slice() {
            // The zone apex and its structure exist.
            [] => {
                if qtype == RecordType::SOA {
                    Outcome::Found {
                        answers: vec![self.soa(0)],
                        additionals: vec![],
                    }
                } else {
                    Outcome::NoData
                }
            }
            ["svc"] | ["pod"] => Outcome::NoData,
            [ns, "svc"] if recs.namespaces.contains(*ns) => Outcome::NoData,
            // <a-b-c-d>.<ns>.pod.<zone>
            [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(addr) if qtype == RecordType::A => found(vec![a(qname, addr)], vec![]),
                Ok(_) => Outcome::NoData,
                Err(_) => Outcome::NxDomain,
            },
            // <svc>.<ns>.svc.<zone>
            [svc, ns, "svc"] => {
                let Some(r) = recs.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Outcome::NxDomain;
                };
                match (&r.target, qtype) {
                    (Target::ExternalName(ext), _) => {
                        let cname =
                            Record::from_rdata(name(qname), TTL, RData::CNAME(CNAME(name(ext))));
                        found(vec![cname], vec![])
                    }
                    (Target::ClusterIp(ip), RecordType::A) => found(vec![a(qname, *ip)], vec![]),
                    (Target::Headless(eps), RecordType::A) => {
                        found(eps.values().map(|ip| a(qname, *ip)).collect(), vec![])
                    }
                    (_, RecordType::SRV) => {
                        let (answers, additionals) = self.srv(recs, ns, svc, None, None);
                        found(answers, additionals)
                    }
                    _ => Outcome::NoData,
                }
            }
            // <host>.<svc>.<ns>.svc.<zone> (a headless Service's endpoint)
            [host, svc, ns, "svc"] if !host.starts_with('_') => {
                match recs.services.get(&(ns.to_string(), svc.to_string())) {
                    Some(r) => match &r.target {
                        Target::Headless(eps) => match eps.get(*host) {
                            Some(ip) if qtype == RecordType::A => {
                                found(vec![a(qname, *ip)], vec![])
                            }
                            Some(_) => Outcome::NoData,
                            None => Outcome::NxDomain,
                        },
                        _ => Outcome::NxDomain,
                    },
                    None => Outcome::NxDomain,
                }
            }
            // _<port>._<proto>.<svc>.<ns>.svc.<zone>
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                if !recs
                    .services
                    .contains_key(&(ns.to_string(), svc.to_string()))
                {
                    return Outcome::NxDomain;
                }
                let (answers, additionals) =
                    self.srv(recs, ns, svc, Some(&port[1..]), Some(&proto[1..]));
                if answers.is_empty() {
                    return Outcome::NxDomain;
                }
                if qtype == RecordType::SRV {
                    found(answers, additionals)
                } else {
                    Outcome::NoData
                }
            }
            _ => {
                let _ = d;
                Outcome::NxDomain
            }
        }
    }

    /// SRV records of a Service's named ports (all, or the one asked for), with the
    /// targets' A records as additionals.
    fn srv(
        &self,
        recs: &Records,
        ns: &str,
        svc: &str,
        port: Option<&str>,
        proto: Option<&str>,
    ) -> (Vec<Record>, Vec<Record>) {
        let d = &self.domain;
        let Some(r) = recs.services.get(&(ns.to_string(), svc.to_string())) else {
            return (vec![], vec![]);
        };
        let svc_name = format!("{svc}.{ns}.svc.{d}");
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        for (pname, pproto, pnum) in &r.ports {
            if port.is_some_and(|p| p != pname) || proto.is_some_and(|p| p != pproto) {
                continue;
            }
            let owner = match (port, proto) {
                (Some(_), Some(_)) => format!("_{pname}._{pproto}.{svc_name}"),
                _ => svc_name.clone(),
            };
            let targets: Vec<(String, Ipv4Addr)> = match &r.target {
                Target::ClusterIp(ip) => vec![(svc_name.clone(), *ip)],
                Target::Headless(eps) => eps
                    .iter()
                    .map(|(host, ip)| (format!("{host}.{svc_name}"), *ip))
                    .collect(),
                Target::ExternalName(ext) => {
                    answers.push(Record::from_rdata(
                        name(&owner),
                        TTL,
                        RData::SRV(SRV::new(0, 100, *pnum, name(ext))),
                    ));
                    continue;
                }
            };
            let weight = (100 / targets.len().max(1)) as u16;
            for (target, ip) in targets {
                answers.push(Record::from_rdata(
                    name(&owner),
                    TTL,
                    RData::SRV(SRV::new(0, weight, *pnum, name(&target))),
                ));
                let extra = a(&target, ip);
                if !additionals.contains(&extra) {
                    additionals.push(extra);
                }
            }
        }
        (answers, additionals)
    }

    fn reverse(&self, recs: &Records, rev: &str, qtype: RecordType) -> Outcome {
        let octets: Vec<&str> = rev.split('.').collect();
        if octets.len() != 4 {
            return Outcome::NotOurs;
        }
        let ip: Option<Ipv4Addr> = octets
            .iter()
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(".")
            .parse()
            .ok();
        let Some(names) = ip.and_then(|ip| recs.reverse.get(&ip)) else {
            return Outcome::NotOurs;
        };
        if qtype != RecordType::PTR {
            return Outcome::NoData;
        }
        let owner = format!("{rev}.in-addr.arpa");
        Outcome::Found {
            answers: names
                .iter()
                .map(|n| {
                    Record::from_rdata(
                        name(&owner),
                        TTL,
                        RData::PTR(PTR(name(&format!("{n}.{}", self.domain)))),
                    )
                })
                .collect(),
            additionals: vec![],
        }
    }

    /// The response to `query` from the zone; `None` when the name is not the zone's
    /// (to be forwarded).
    pub fn respond(&self, recs: &Records, query: &Message, serial: u32) -> Option<Message> {
        let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = query.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        let Some(q) = query.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return Some(resp);
        };
        resp.add_query(q.clone());
        if query.queries.len() != 1 {
            resp.metadata.response_code = ResponseCode::FormErr;
            return Some(resp);
        }
        if query.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return Some(resp);
        }
        let qname = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match self.resolve(recs, &qname, q.query_type()) {
            Outcome::NotOurs => return None,
            Outcome::Found {
                answers,
                additionals,
            } => {
                resp.metadata.authoritative = true;
                // Answers carry the name as asked (case preserved).
                for mut r in answers {
                    if r.name.to_ascii().eq_ignore_ascii_case(&q.name().to_ascii()) {
                        r.name = q.name().clone();
                    }
                    resp.add_answer(r);
                }
                resp.add_additionals(additionals);
            }
            Outcome::NoData => {
                resp.metadata.authoritative = true;
                resp.add_authority(self.soa(serial));
            }
            Outcome::NxDomain => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(self.soa(serial));
            }
        }
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn records() -> Records {
        let svcs: Vec<Service> = serde_norway::from_str(
            "
- metadata: {name: web, namespace: default}
  spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}
- metadata: {name: db, namespace: prod}
  spec: {clusterIP: None, ports: [{name: mysql, port: 3306}]}
- metadata: {name: ext, namespace: default}
  spec: {type: ExternalName, externalName: db.example.com.}
",
        )
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_norway::from_str(
            "
- metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  endpoints:
  - {addresses: [10.244.1.5], hostname: db-0}
  - {addresses: [10.244.1.6], hostname: db-1}
",
        )
        .unwrap();
        Records::build(&svcs, &slices)
    }

    fn ips(o: &Outcome) -> Vec<String> {
        match o {
            Outcome::Found { answers, .. } => answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::CNAME(c) => c.0.to_ascii(),
                    RData::PTR(p) => p.0.to_ascii(),
                    RData::SRV(s) => format!("{} {} {}", s.weight, s.port, s.target.to_ascii()),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_dns_specifications_names() {
        let z = Zone::new("cluster.local");
        let r = records();
        use RecordType::*;
        let q = |n: &str, t| z.resolve(&r, n, t);
        assert_eq!(ips(&q("web.default.svc.cluster.local", A)), ["10.96.0.20"]);
        assert_eq!(q("web.default.svc.cluster.local", AAAA), Outcome::NoData);
        assert_eq!(q("nope.default.svc.cluster.local", A), Outcome::NxDomain);
        assert_eq!(
            ips(&q("db.prod.svc.cluster.local", A)),
            ["10.244.1.5", "10.244.1.6"]
        );
        assert_eq!(ips(&q("db-1.db.prod.svc.cluster.local", A)), ["10.244.1.6"]);
        assert_eq!(q("db-9.db.prod.svc.cluster.local", A), Outcome::NxDomain);
        assert_eq!(
            ips(&q("_http._tcp.web.default.svc.cluster.local", SRV)),
            ["100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            ips(&q("_mysql._tcp.db.prod.svc.cluster.local", SRV)),
            [
                "50 3306 db-0.db.prod.svc.cluster.local.",
                "50 3306 db-1.db.prod.svc.cluster.local."
            ]
        );
        assert_eq!(
            q("_mysql._udp.db.prod.svc.cluster.local", SRV),
            Outcome::NxDomain
        );
        assert_eq!(
            ips(&q("ext.default.svc.cluster.local", A)),
            ["db.example.com."]
        );
        assert_eq!(
            ips(&q("10-244-3-7.default.pod.cluster.local", A)),
            ["10.244.3.7"]
        );
        assert_eq!(
            ips(&q("20.0.96.10.in-addr.arpa", PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            ips(&q("5.1.244.10.in-addr.arpa", PTR)),
            ["db-0.db.prod.svc.cluster.local."]
        );
        assert_eq!(q("9.9.9.9.in-addr.arpa", PTR), Outcome::NotOurs);
        assert_eq!(q("example.com", A), Outcome::NotOurs);
        assert_eq!(q("notcluster.local", A), Outcome::NotOurs);
        assert_eq!(q("default.svc.cluster.local", A), Outcome::NoData);
        assert_eq!(q("other.svc.cluster.local", A), Outcome::NxDomain);
    }

    #[test]
    fn responses_carry_soa_and_codes() {
        let z = Zone::new("cluster.local.");
        let r = records();
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(hickory_proto::op::Query::query(
            name("Web.Default.svc.cluster.local"),
            RecordType::A,
        ));
        let resp = z.respond(&r, &m, 1).unwrap();
        assert_eq!(resp.metadata.id, 7);
        assert!(resp.metadata.authoritative);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(
            resp.answers[0].name.to_ascii(),
            "Web.Default.svc.cluster.local."
        );
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            name("missing.default.svc.cluster.local"),
            RecordType::A,
        ));
        let resp = z.respond(&r, &m, 1).unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(resp.authorities.len(), 1);
        assert_eq!(resp.authorities[0].record_type(), RecordType::SOA);
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            name("example.com"),
            RecordType::A,
        ));
        assert!(z.respond(&r, &m, 1).is_none());
    }
}
