//! The `pgoutput` messages (protocol version 1) that carry changes: Relation, Insert, Update,
//! Delete and Truncate. Begin, Commit and logical messages are parsed by the replication client;
//! Type and Origin messages carry nothing the log needs and are skipped.
//!
//! Layout: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use std::fmt;

/// One column of a relation, as the Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

/// A Relation message: the table's names and columns as of the changes that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) oid: u32,
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    /// An unchanged TOASTed value the stream leaves out (taken from the old row).
    Unchanged,
    /// The type's text output.
    Text(String),
}

/// A change message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Cell>,
    },
    Update {
        relation: u32,
        /// The whole old row under `REPLICA IDENTITY FULL` (`O`), or its key (`K`), or none.
        old: Option<Vec<Cell>>,
        new: Vec<Cell>,
    },
    Delete {
        relation: u32,
        old: Vec<Cell>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Anything else (Type, Origin): nothing to log.
    Other,
}

/// A message that does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed(format!(
                "needed {n} more bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Malformed("unterminated string".into()))?;
        let s = String::from_utf8(self.bytes[..end].to_vec())
            .map_err(|_| Malformed("a name is not UTF-8".into()))?;
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Cell>, Malformed> {
        let n = self.u16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Cell::Null),
                b'u' => Ok(Cell::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    let text = String::from_utf8(self.take(len)?.to_vec())
                        .map_err(|_| Malformed("a value is not UTF-8".into()))?;
                    Ok(Cell::Text(text))
                }
                other => Err(Malformed(format!(
                    "tuple value kind {:?} (binary values are not requested)",
                    other as char
                ))),
            })
            .collect()
    }
}

/// Parses one `XLogData` payload.
pub(crate) fn parse(bytes: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { bytes };
    Ok(match r.u8()? {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let columns = (0..n)
                .map(|_| {
                    let _flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    Ok(Column { name, type_oid })
                })
                .collect::<Result<_, Malformed>>()?;
            Message::Relation(Relation {
                oid,
                schema,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    expect(&mut r, b'N')?;
                    Some(old)
                }
                b'N' => None,
                other => return Err(Malformed(format!("update tuple tag {:?}", other as char))),
            };
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => {}
                other => return Err(Malformed(format!("delete tuple tag {:?}", other as char))),
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            Message::Truncate {
                relations: (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?,
            }
        }
        _ => Message::Other,
    })
}

fn expect(r: &mut Reader<'_>, tag: u8) -> Result<(), Malformed> {
    match r.u8()? {
        t if t == tag => Ok(()),
        t => Err(Malformed(format!(
            "expected tuple tag {:?}, found {:?}",
            tag as char, t as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(cells: &[Option<&str>]) -> Vec<u8> {
        let mut out = (cells.len() as u16).to_be_bytes().to_vec();
        for cell in cells {
            match cell {
                None => out.push(b'n'),
                Some("\u{0}u") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as u32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn relation_and_changes_parse() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0users\0");
        rel.push(b'f');
        rel.extend(2u16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(23u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"bio\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = parse(&rel).unwrap() else {
            panic!()
        };
        assert_eq!((r.schema.as_str(), r.name.as_str()), ("public", "users"));
        assert_eq!(r.columns[1].type_oid, 25);

        let mut update = vec![b'U'];
        update.extend(16384u32.to_be_bytes());
        update.push(b'O');
        update.extend(tuple(&[Some("1"), Some("long")]));
        update.push(b'N');
        update.extend(tuple(&[Some("2"), Some("\u{0}u")]));
        assert_eq!(
            parse(&update).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(vec![Cell::Text("1".into()), Cell::Text("long".into())]),
                new: vec![Cell::Text("2".into()), Cell::Unchanged],
            }
        );

        let mut delete = vec![b'D'];
        delete.extend(16384u32.to_be_bytes());
        delete.push(b'O');
        delete.extend(tuple(&[Some("2"), None]));
        assert!(matches!(parse(&delete).unwrap(), Message::Delete { .. }));
        assert!(parse(&delete[..delete.len() - 1]).is_err());
    }
}
