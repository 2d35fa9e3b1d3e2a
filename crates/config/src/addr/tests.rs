//! NodeAddr parsing, normalisation and the Display/FromStr round trip.

use super::*;

fn parse(text: &str) -> Result<NodeAddr, ParseNodeAddrError> {
    NodeAddr::from_str(text)
}

fn node(host: &str, port: u16) -> NodeAddr {
    NodeAddr {
        host: host.to_owned(),
        port,
    }
}

#[test]
fn accepts_ipv4_ipv6_and_dns_names() {
    assert_eq!(parse("127.0.0.1:5432").ok(), Some(node("127.0.0.1", 5432)));
    assert_eq!(parse("[::1]:5432").ok(), Some(node("::1", 5432)));
    assert_eq!(
        parse("db-1.internal:6000").ok(),
        Some(node("db-1.internal", 6000))
    );
    assert_eq!(
        parse("pg_primary:5432").ok(),
        Some(node("pg_primary", 5432))
    );
    assert_eq!(
        parse("localhost:65535").ok(),
        Some(node("localhost", 65535))
    );
}

#[test]
fn accepts_unix_socket_directories_as_libpq_does() {
    let unix = parse("/var/run/postgresql:5432").ok();
    assert_eq!(unix, Some(node("/var/run/postgresql", 5432)));
    assert_eq!(
        unix.as_ref().and_then(NodeAddr::unix_socket),
        Some(std::path::PathBuf::from(
            "/var/run/postgresql/.s.PGSQL.5432"
        ))
    );
    assert_eq!(parse("/tmp/pg/:6000").ok(), Some(node("/tmp/pg", 6000)));
    assert_eq!(
        parse("/tmp/pg:6000").map(|n| n.to_string()).ok(),
        Some("/tmp/pg:6000".into())
    );
    assert_eq!(
        parse("127.0.0.1:5432").ok().and_then(|n| n.unix_socket()),
        None
    );
    for bad in ["/tmp/pg", "/tmp//pg:5432", "/tmp/pg:0"] {
        assert!(parse(bad).is_err(), "{bad:?} parsed");
    }
    let long = format!("/{}:5432", "d".repeat(100));
    assert!(parse(&long)
        .err()
        .is_some_and(|e| e.to_string().contains("107 bytes")));
}

#[test]
fn normalises_so_spellings_of_one_node_compare_equal() {
    assert_eq!(
        parse("DB.Example.COM:5432").ok(),
        Some(node("db.example.com", 5432))
    );
    assert_eq!(parse("[0:0::1]:5432").ok(), parse("[::1]:5432").ok());
    assert_eq!(
        parse("[::1]:5432").map(|n| n.to_string()).ok(),
        Some("[::1]:5432".into())
    );
}

#[test]
fn rejects_malformed_addresses_with_a_matching_reason() {
    let cases: &[(&str, &str)] = &[
        ("localhost", "expected host:port, got \"localhost\""),
        ("", "expected host:port"),
        ("host:0", "invalid port \"0\""),
        ("host:65536", "invalid port \"65536\""),
        ("host:+5432", "invalid port \"+5432\""),
        ("host:", "invalid port \"\""),
        ("::1:5432", "must be in brackets"),
        ("[::1]", "expected host:port"),
        ("[::1:5432", "invalid IPv6"),
        ("[not-ip]:5432", "invalid IPv6"),
        (":5432", "invalid host \"\""),
        ("bad host:5432", "invalid host \"bad host\""),
        ("-lead.example:5432", "invalid host"),
        ("a..b:5432", "invalid host"),
        ("example.com.:5432", "invalid host"),
        ("127.1:5432", "invalid host \"127.1\""),
        ("300.0.0.1:5432", "invalid host"),
    ];
    for (input, expected) in cases {
        match parse(input) {
            Ok(addr) => panic!("{input:?} parsed as {addr:?}"),
            Err(err) => assert!(
                err.to_string().contains(expected),
                "{input:?}: {err} does not contain {expected:?}"
            ),
        }
    }
    let long_label = format!("{}:1", "a".repeat(64));
    assert!(parse(&long_label).is_err());
}

/// A small deterministic generator: enough variety for a round-trip property without pulling
/// a property-testing crate into the build.
struct Lcg(u64);

impl Lcg {
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}

fn random_node(rng: &mut Lcg) -> NodeAddr {
    let port = u16::try_from(1 + rng.below(65535)).unwrap_or(1);
    let host = match rng.below(3) {
        0 => Ipv4Addr::from(u32::try_from(rng.step()).unwrap_or(0)).to_string(),
        1 => {
            let mut segments = [0u16; 8];
            for segment in &mut segments {
                // Mostly zeros so `::` compression shows up often.
                *segment = if rng.below(2) == 0 {
                    0
                } else {
                    rng.step() as u16
                };
            }
            Ipv6Addr::from(segments).to_string()
        }
        _ => {
            const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
            let labels: Vec<String> = (0..1 + rng.below(4))
                .map(|_| {
                    let len = 1 + rng.below(12);
                    let mut label: String = (0..len)
                        .map(|_| char::from(CHARS[rng.below(CHARS.len() as u64) as usize]))
                        .collect();
                    // Labels may not start or end with '-', and an all-digit name reads as IPv4.
                    label.insert(0, 'h');
                    label.push('x');
                    label
                })
                .collect();
            labels.join(".")
        }
    };
    NodeAddr { host, port }
}

#[test]
fn display_and_from_str_round_trip() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..5000 {
        let addr = random_node(&mut rng);
        let text = addr.to_string();
        match NodeAddr::from_str(&text) {
            Ok(parsed) => assert_eq!(parsed, addr, "via {text:?}"),
            Err(err) => panic!("{text:?} did not parse: {err}"),
        }
    }
}

#[test]
fn reaches_listener_only_for_literal_loopback_spellings() {
    let listen = |s: &str| SocketAddr::from_str(s).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 1)));
    assert!(reaches_listener(
        &node("127.0.0.1", 6432),
        listen("127.0.0.1:6432")
    ));
    assert!(reaches_listener(
        &node("localhost", 6432),
        listen("127.0.0.1:6432")
    ));
    assert!(reaches_listener(
        &node("127.0.0.1", 6432),
        listen("0.0.0.0:6432")
    ));
    assert!(reaches_listener(&node("::1", 6432), listen("[::]:6432")));
    assert!(!reaches_listener(
        &node("127.0.0.1", 5432),
        listen("127.0.0.1:6432")
    ));
    assert!(!reaches_listener(
        &node("db.internal", 6432),
        listen("0.0.0.0:6432")
    ));
    assert!(!reaches_listener(
        &node("10.0.0.5", 6432),
        listen("10.0.0.6:6432")
    ));
    assert!(!reaches_listener(
        &node("127.0.0.1", 6432),
        listen("127.0.0.1:0")
    ));
}
