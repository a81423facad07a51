//! A bounded reader of DNS response messages (RFC 1035 §4.1): the header, the question, and
//! the answer section's A, AAAA and CNAME records. Everything else is skipped by its length.
//!
//! Hostile input is the normal case (a pod can talk to the DNS service and the service can
//! forward what an outside server says), so every read is bounds-checked and every loop is
//! bounded: compression pointers must point strictly backwards (no loops), a name has at most
//! 255 octets, a message at most [`MAX_ANSWERS`] answers are read. The datapath's reader will
//! have the same bounds (the verifier requires them), so the two can be held equal by tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Answers read per message; the rest are ignored (not learnt). A CNAME chain and a handful of
/// addresses fit; a message with more is unusual and its tail is not needed for correctness
/// (fewer addresses learnt means fewer connections allowed: fails closed).
pub const MAX_ANSWERS: usize = 16;
/// Compression pointers followed per name.
const MAX_POINTERS: usize = 16;
/// Octets of a name on the wire, length bytes included (RFC 1035 §2.3.4).
const MAX_WIRE_NAME: usize = 255;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    Addr(IpAddr),
    Cname(String),
}

/// One answer record: owner name (lower-case, no trailing dot), TTL in seconds, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RecordData,
}

/// What a response says, as far as learning needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    /// RCODE (0 = no error).
    pub rcode: u8,
    /// TC: the answer was cut to fit a UDP datagram; the client asks again over TCP.
    pub truncated: bool,
    /// The question's name (lower-case, no trailing dot) and type.
    pub question: (String, u16),
    /// A, AAAA and CNAME records of the answer section, class IN, in order.
    pub answers: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message is {0} octets; a DNS header alone is 12")]
    Short(usize),
    #[error("not a response (QR bit clear)")]
    NotResponse,
    #[error("opcode {0} is not a standard query")]
    Opcode(u8),
    #[error("{0} questions; exactly one is expected")]
    Questions(u16),
    #[error("truncated at octet {0}")]
    Truncated(usize),
    #[error("name at octet {0}: {1}")]
    Name(usize, &'static str),
    #[error("{kind} record at octet {at} has {len} octets of data")]
    BadLength {
        kind: &'static str,
        at: usize,
        len: usize,
    },
}

struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.msg.len())
            .ok_or(DnsError::Truncated(self.at))?;
        let s = &self.msg[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name at the cursor; the cursor moves past it (past the
    /// first pointer if there is one).
    fn name(&mut self) -> Result<String, DnsError> {
        let start = self.at;
        let (name, end) = read_name(self.msg, start)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads the name at `at`: returns it (lower-case, labels joined by '.', no trailing dot) and
/// the offset just after it in the message (after the first pointer, if any).
fn read_name(msg: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut pos = at;
    let mut end = None;
    let mut pointers = 0;
    let mut wire = 0usize;
    let mut out = String::new();
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated(pos))? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                wire += 1;
                if wire > MAX_WIRE_NAME {
                    return Err(DnsError::Name(at, "longer than 255 octets"));
                }
                return Ok((out, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                wire += 1 + len;
                if wire > MAX_WIRE_NAME {
                    return Err(DnsError::Name(at, "longer than 255 octets"));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(DnsError::Truncated(pos))?;
                if !out.is_empty() {
                    out.push('.');
                }
                // Labels are octets; a name with a byte outside printable ASCII or a dot
                // inside a label cannot match any pattern (patterns are ASCII without
                // dots in labels): keep it unmatchable rather than guessing.
                for &b in label {
                    if b.is_ascii_graphic() && b != b'.' {
                        out.push(b.to_ascii_lowercase() as char);
                    } else {
                        out.push('\u{fffd}');
                    }
                }
                pos += 1 + len;
            }
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(DnsError::Truncated(pos))? as usize;
                let target = ((len & 0x3f) << 8) | lo;
                if target >= pos {
                    return Err(DnsError::Name(
                        at,
                        "compression pointer does not point back",
                    ));
                }
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DnsError::Name(at, "too many compression pointers"));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(DnsError::Name(at, "reserved label type")),
        }
    }
}

/// Reads a response. Only the first [`MAX_ANSWERS`] answers are looked at; records of other
/// types or classes are skipped.
pub fn parse_response(msg: &[u8]) -> Result<Response, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Short(msg.len()));
    }
    let mut r = Reader { msg, at: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    r.take(4)?; // NSCOUNT, ARCOUNT: those sections are never learnt from.
    if qdcount != 1 {
        return Err(DnsError::Questions(qdcount));
    }
    let qname = r.name()?;
    let qtype = r.u16()?;
    r.u16()?; // QCLASS
    let mut answers = Vec::new();
    for _ in 0..usize::from(ancount).min(MAX_ANSWERS) {
        let name = r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        let ttl = r.u32()?;
        let rdlen = usize::from(r.u16()?);
        let data_at = r.at;
        let rdata = r.take(rdlen)?;
        if class != CLASS_IN {
            continue;
        }
        let data = match rtype {
            TYPE_A => {
                let b: [u8; 4] = rdata.try_into().map_err(|_| DnsError::BadLength {
                    kind: "A",
                    at: data_at,
                    len: rdlen,
                })?;
                RecordData::Addr(IpAddr::V4(Ipv4Addr::from(b)))
            }
            TYPE_AAAA => {
                let b: [u8; 16] = rdata.try_into().map_err(|_| DnsError::BadLength {
                    kind: "AAAA",
                    at: data_at,
                    len: rdlen,
                })?;
                RecordData::Addr(IpAddr::V6(Ipv6Addr::from(b)))
            }
            TYPE_CNAME => {
                let (target, end) = read_name(msg, data_at)?;
                if end != data_at + rdlen {
                    return Err(DnsError::BadLength {
                        kind: "CNAME",
                        at: data_at,
                        len: rdlen,
                    });
                }
                RecordData::Cname(target)
            }
            _ => continue,
        };
        answers.push(Record { name, ttl, data });
    }
    Ok(Response {
        id,
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        question: (qname, qtype),
        answers,
    })
}

/// Records for tests (here, in `learn.rs` and in the lab).
#[cfg(any(test, feature = "testing"))]
impl Record {
    /// An A or AAAA record (by the address's family).
    pub fn addr(name: &str, ttl: u32, ip: &str) -> Record {
        Record {
            name: name.into(),
            ttl,
            data: RecordData::Addr(ip.parse().expect("an IP address")),
        }
    }

    pub fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record {
            name: name.into(),
            ttl,
            data: RecordData::Cname(target.into()),
        }
    }
}

/// Builds response messages for tests (here and in the lab): one question, the given answers,
/// names written uncompressed except that an answer's owner equal to the question points to it.
#[cfg(any(test, feature = "testing"))]
pub fn build_response(id: u16, question: &str, qtype: u16, answers: &[Record]) -> Vec<u8> {
    build(id, question, qtype, answers, false)
}

/// As [`build_response`], but compressed as servers write answers: every owner name that
/// appeared before (the question, or a CNAME's target) is a pointer to its first occurrence.
#[cfg(any(test, feature = "testing"))]
pub fn build_compressed_response(
    id: u16,
    question: &str,
    qtype: u16,
    answers: &[Record],
) -> Vec<u8> {
    build(id, question, qtype, answers, true)
}

#[cfg(any(test, feature = "testing"))]
fn build(id: u16, question: &str, qtype: u16, answers: &[Record], compress: bool) -> Vec<u8> {
    fn put_name(out: &mut Vec<u8>, name: &str) {
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    fn norm(name: &str) -> String {
        name.trim_end_matches('.').to_ascii_lowercase()
    }
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x8180u16.to_be_bytes()); // response, RD, RA, NOERROR
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    // Names written so far and where (for pointers).
    let mut seen: Vec<(String, u16)> = vec![(norm(question), 12)];
    put_name(&mut out, question);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    for a in answers {
        let at = seen
            .iter()
            .find(|(n, _)| *n == norm(&a.name))
            .map(|&(_, at)| at)
            .filter(|&at| compress || at == 12);
        match at {
            Some(at) => out.extend_from_slice(&(0xc000 | at).to_be_bytes()),
            None => put_name(&mut out, &a.name),
        }
        let (rtype, rdata) = match &a.data {
            RecordData::Addr(IpAddr::V4(v4)) => (TYPE_A, v4.octets().to_vec()),
            RecordData::Addr(IpAddr::V6(v6)) => (TYPE_AAAA, v6.octets().to_vec()),
            RecordData::Cname(t) => {
                let mut d = Vec::new();
                match seen.iter().find(|(n, _)| compress && *n == norm(t)) {
                    Some(&(_, at)) => d.extend_from_slice(&(0xc000 | at).to_be_bytes()),
                    None => {
                        seen.push((norm(t), (out.len() + 10) as u16));
                        put_name(&mut d, t);
                    }
                }
                (TYPE_CNAME, d)
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&a.ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_compressed_response_reads_back_as_the_uncompressed_one() {
        let answers = vec![
            Record::cname("api.example.com", 300, "edge.cdn.example.net"),
            Record::addr("edge.cdn.example.net", 60, "192.0.2.7"),
        ];
        let plain = build_response(9, "api.example.com", TYPE_A, &answers);
        let packed = build_compressed_response(9, "api.example.com", TYPE_A, &answers);
        assert!(packed.len() < plain.len());
        assert_eq!(parse_response(&packed), parse_response(&plain));
    }

    #[test]
    fn a_response_reads_back_as_built() {
        let answers = vec![
            Record::cname("api.example.com", 300, "edge.cdn.example.net"),
            Record::addr("edge.cdn.example.net", 60, "192.0.2.7"),
            Record::addr("edge.cdn.example.net", 60, "2001:db8::7"),
        ];
        let msg = build_response(7, "API.Example.com.", TYPE_A, &answers);
        let r = parse_response(&msg).expect("parses");
        assert_eq!(r.id, 7);
        assert_eq!(r.rcode, 0);
        assert!(!r.truncated);
        assert_eq!(r.question, ("api.example.com".into(), TYPE_A));
        assert_eq!(r.answers, answers);
    }

    #[test]
    fn compression_pointers_are_followed_only_backwards() {
        let mut msg = build_response(
            1,
            "a.example.com",
            TYPE_A,
            &[Record::addr("a.example.com", 5, "192.0.2.1")],
        );
        // The answer's owner is a pointer to the question (octet 12): fine.
        assert_eq!(parse_response(&msg).expect("parses").answers.len(), 1);
        // A pointer to itself or forwards is refused (a loop otherwise).
        let owner = 12 + "a.example.com".len() + 2 + 4;
        assert_eq!(&msg[owner..owner + 2], &[0xc0, 12]);
        msg[owner + 1] = owner as u8;
        assert!(
            matches!(parse_response(&msg), Err(DnsError::Name(_, m)) if m.contains("point back"))
        );
    }

    #[test]
    fn queries_bad_lengths_and_short_messages_are_errors_not_panics() {
        let msg = build_response(
            1,
            "a.example.com",
            TYPE_A,
            &[Record::addr("a.example.com", 5, "192.0.2.1")],
        );
        let mut query = msg.clone();
        query[2] &= 0x7f;
        assert_eq!(parse_response(&query), Err(DnsError::NotResponse));
        for cut in 0..msg.len() {
            assert!(parse_response(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = msg.clone();
        let rdlen_at = msg.len() - 6;
        bad[rdlen_at + 1] = 3; // an A record of 3 octets
        assert!(parse_response(&bad).is_err());
    }

    proptest! {
        /// Any byte string: an answer or an error, never a panic or a hang; names stay within
        /// DNS's length limit.
        #[test]
        fn arbitrary_bytes_never_panic(msg in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(r) = parse_response(&msg) {
                prop_assert!(r.question.0.len() <= 255);
                prop_assert!(r.answers.len() <= MAX_ANSWERS);
            }
        }

        /// Mutating one byte of a real response never panics either.
        #[test]
        fn mutated_responses_never_panic(at in 0usize..200, byte in any::<u8>()) {
            let mut msg = build_response(9, "x.cdn.example.com", TYPE_AAAA, &[
                Record::cname("x.cdn.example.com", 30, "y.example.net"),
                Record::addr("y.example.net", 30, "2001:db8::1"),
            ]);
            let at = at % msg.len();
            msg[at] = byte;
            let _ = parse_response(&msg);
        }
    }
}
