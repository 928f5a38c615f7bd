//! librdkafka properties an operator passes through to every Kafka client of a run (consumer, producer,
//! admin): TLS, SASL, timeouts, client ids — whatever the cluster requires.
//!
//! They come from the spec's `[kafka.properties]` table and `[kafka.secret_files]` table, and from the
//! command line (`--kafka-property KEY=VALUE`, `--kafka-secret-file KEY=PATH`), which wins for a key given in
//! both. Three rules keep them safe:
//!
//! * **Secrets only from files.** A key that holds a secret (its name contains `password` or `secret`, or
//!   it is `ssl.key.pem` or `sasl.oauthbearer.config`) is refused as an inline value: a spec is committed
//!   and a command line is visible to every user of the host (`ps`). `secret_files` / `--kafka-secret-file`
//!   name a file whose contents (one trailing newline removed) are the value, the way a mounted Kubernetes
//!   or systemd credential is read.
//! * **Never echoed.** [`KafkaProperties`]'s `Debug` and [`KafkaProperties::describe`] (what the run logs)
//!   show a secret as `<from PATH>`; errors name the key and the file, never the contents.
//! * **fleetwatch's guarantees are not configurable away.** The keys fleetwatch owns — where the brokers
//!   are, the consumer group, offset commits, the idempotent producer — are refused with what to use
//!   instead (see [`RESERVED`]). Every other property overrides fleetwatch's defaults (`linger.ms`,
//!   `socket.timeout.ms`, ...); librdkafka itself refuses unknown properties and bad values when the client is
//!   created, and the run stops with its message.
//!
//! Keys are librdkafka's (`CONFIGURATION.md` of librdkafka); a TOML table may nest them
//! (`security.protocol = "SASL_SSL"` unquoted is the table `security` with the key `protocol`): nested
//! tables are joined with dots, so both spellings mean the same property.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Keys fleetwatch sets itself, with what an operator uses instead.
pub const RESERVED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "the brokers come from the kafka://HOST:PORT/TOPIC address",
    ),
    (
        "metadata.broker.list",
        "the brokers come from the kafka://HOST:PORT/TOPIC address",
    ),
    ("group.id", "use --group-id or the spec's kafka.group_id"),
    (
        "enable.auto.commit",
        "fleetwatch commits offsets itself, after each epoch its output has made durable",
    ),
    (
        "enable.auto.offset.store",
        "fleetwatch commits offsets itself, after each epoch its output has made durable",
    ),
    (
        "auto.offset.reset",
        "fleetwatch assigns every partition its position (the committed offset, a checkpoint's cut or the beginning)",
    ),
    (
        "enable.partition.eof",
        "the source tracks catching up with the high watermark itself",
    ),
    (
        "enable.idempotence",
        "the output's ordering and one-epoch duplicate rule need the idempotent producer",
    ),
];

/// What can be wrong with the properties.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error(
        "kafka property {0:?} is not KEY=VALUE with a librdkafka key (letters, digits, '.', '_', '-')"
    )]
    Syntax(String),
    #[error("kafka property {key:?} cannot be set: {instead}")]
    Reserved { key: String, instead: String },
    #[error(
        "kafka property {key:?} holds a secret: give it from a file (--kafka-secret-file {key}=PATH or the \
         spec's [kafka.secret_files]), not inline"
    )]
    InlineSecret { key: String },
    #[error("kafka property {key:?} in the spec must be a string, number or boolean")]
    Value { key: String },
    #[error("kafka secret file for {key:?} ({path}): {message}")]
    SecretFile {
        key: String,
        path: String,
        message: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
enum Value {
    Plain(String),
    Secret { value: String, file: PathBuf },
}

/// The resolved properties of a run: applied, in key order, after fleetwatch's own settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    entries: BTreeMap<String, Value>,
}

/// Whether a key's value is a secret (read from a file, never shown).
pub fn is_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
}

fn check_key(key: &str, raw: &str) -> Result<(), PropertyError> {
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !valid {
        return Err(PropertyError::Syntax(raw.to_string()));
    }
    if let Some((_, instead)) = RESERVED.iter().find(|(k, _)| *k == key) {
        return Err(PropertyError::Reserved {
            key: key.to_string(),
            instead: instead.to_string(),
        });
    }
    Ok(())
}

fn split_pair(raw: &str) -> Result<(&str, &str), PropertyError> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim(), v))
        .ok_or_else(|| PropertyError::Syntax(raw.to_string()))
}

/// Flattens a TOML table of properties: nested tables joined with dots, scalars as librdkafka strings.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), PropertyError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out)?,
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Integer(i) => out.push((key, i.to_string())),
            toml::Value::Float(f) => out.push((key, f.to_string())),
            toml::Value::Boolean(b) => out.push((key, b.to_string())),
            _ => return Err(PropertyError::Value { key }),
        }
    }
    Ok(())
}

fn read_secret(key: &str, path: &Path) -> Result<String, PropertyError> {
    let fail = |message: String| PropertyError::SecretFile {
        key: key.to_string(),
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    // One trailing line end, as `echo` or an editor leaves it; anything else is the secret's own.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(fail("empty".into()));
    }
    Ok(text)
}

impl KafkaProperties {
    /// The properties of a run: the spec's tables, then the command line's pairs (later wins per key);
    /// logged at `info` as [`KafkaProperties::describe`] shows them.
    /// `spec_properties` is the spec's `[kafka.properties]`, `spec_secret_files` its `[kafka.secret_files]`
    /// (key → path); `cli_properties` are `KEY=VALUE`, `cli_secret_files` `KEY=PATH`. Relative paths are
    /// relative to the working directory.
    pub fn resolve(
        spec_properties: &toml::Table,
        spec_secret_files: &toml::Table,
        cli_properties: &[String],
        cli_secret_files: &[String],
    ) -> Result<KafkaProperties, PropertyError> {
        let mut plain = Vec::new();
        flatten("", spec_properties, &mut plain)?;
        for raw in cli_properties {
            let (k, v) = split_pair(raw)?;
            plain.push((k.to_string(), v.to_string()));
        }
        let mut files = Vec::new();
        flatten("", spec_secret_files, &mut files)?;
        for raw in cli_secret_files {
            let (k, v) = split_pair(raw)?;
            files.push((k.to_string(), v.to_string()));
        }
        let mut entries = BTreeMap::new();
        for (key, value) in plain {
            check_key(&key, &format!("{key}=…"))?;
            if is_secret(&key) {
                return Err(PropertyError::InlineSecret { key });
            }
            entries.insert(key, Value::Plain(value));
        }
        for (key, path) in files {
            check_key(&key, &format!("{key}={path}"))?;
            let file = PathBuf::from(path);
            let value = read_secret(&key, &file)?;
            entries.insert(key, Value::Secret { value, file });
        }
        let p = KafkaProperties { entries };
        if !p.is_empty() {
            tracing::info!(properties = %p.describe(), "kafka client properties");
        }
        Ok(p)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (key, value) with the secrets' real values: only for handing to librdkafka.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| {
            let v = match v {
                Value::Plain(s) => s.as_str(),
                Value::Secret { value, .. } => value.as_str(),
            };
            (k.as_str(), v)
        })
    }

    /// The properties as a log line may show them: `key=value`, a secret as `key=<from PATH>`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.entries {
            if !s.is_empty() {
                s.push(' ');
            }
            match v {
                Value::Plain(p) => s.push_str(&format!("{k}={p}")),
                Value::Secret { file, .. } => s.push_str(&format!("{k}=<from {}>", file.display())),
            }
        }
        s
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaProperties({})", self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn secret_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleetwatch-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    #[test]
    fn spec_tables_nested_or_quoted_mean_the_same_keys_and_the_command_line_wins() {
        let spec = table(
            "\"security.protocol\" = \"SASL_SSL\"\nsasl.mechanism = \"SCRAM-SHA-512\"\n\
             socket.timeout.ms = 30000\napi.version.request = true\n",
        );
        let p = KafkaProperties::resolve(
            &spec,
            &toml::Table::new(),
            &[
                "security.protocol=SASL_PLAINTEXT".into(),
                "client.id=a=b".into(),
            ],
            &[],
        )
        .unwrap();
        let got: Vec<(&str, &str)> = p.pairs().collect();
        assert_eq!(
            got,
            vec![
                ("api.version.request", "true"),
                ("client.id", "a=b"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_PLAINTEXT"),
                ("socket.timeout.ms", "30000"),
            ]
        );
    }

    #[test]
    fn secrets_come_from_files_and_are_never_shown() {
        let f = secret_file("pw", "hunter2\n");
        let p = KafkaProperties::resolve(
            &table("sasl.username = \"alice\""),
            &toml::Table::new(),
            &[],
            &[format!("sasl.password={}", f.display())],
        )
        .unwrap();
        assert!(p.pairs().any(|kv| kv == ("sasl.password", "hunter2")));
        let shown = format!("{} {:?}", p.describe(), p);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(&format!("sasl.password=<from {}>", f.display())));
        assert!(shown.contains("sasl.username=alice"));
        // A spec's secret_files table does the same, CRLF line end removed.
        let f2 = secret_file("pw2", "s3cr3t\r\n");
        let files = table(&format!(
            "ssl.key.password = {:?}",
            f2.display().to_string()
        ));
        let p = KafkaProperties::resolve(&toml::Table::new(), &files, &[], &[]).unwrap();
        assert_eq!(
            p.pairs().collect::<Vec<_>>(),
            vec![("ssl.key.password", "s3cr3t")]
        );
    }

    #[test]
    fn inline_secrets_reserved_keys_and_bad_pairs_are_refused() {
        let none = toml::Table::new();
        let r = |cli: &[&str]| {
            let cli: Vec<String> = cli.iter().map(|s| s.to_string()).collect();
            KafkaProperties::resolve(&none, &none, &cli, &[])
        };
        assert_eq!(
            r(&["sasl.password=hunter2"]),
            Err(PropertyError::InlineSecret {
                key: "sasl.password".into()
            })
        );
        assert!(
            !PropertyError::InlineSecret {
                key: "sasl.password".into()
            }
            .to_string()
            .contains("hunter2")
        );
        assert!(matches!(
            r(&["group.id=x"]),
            Err(PropertyError::Reserved { .. })
        ));
        assert!(matches!(
            r(&["enable.idempotence=false"]),
            Err(PropertyError::Reserved { .. })
        ));
        assert!(matches!(r(&["no-equals"]), Err(PropertyError::Syntax(_))));
        assert!(matches!(r(&["=v"]), Err(PropertyError::Syntax(_))));
        assert!(matches!(r(&["bad key=v"]), Err(PropertyError::Syntax(_))));
        // In the spec, too.
        let spec = table("sasl.oauthbearer.client.secret = \"x\"");
        assert!(matches!(
            KafkaProperties::resolve(&spec, &none, &[], &[]),
            Err(PropertyError::InlineSecret { .. })
        ));
        let spec = table("bootstrap.servers = \"h:1\"");
        assert!(matches!(
            KafkaProperties::resolve(&spec, &none, &[], &[]),
            Err(PropertyError::Reserved { .. })
        ));
        let spec = table("sasl.kerberos.min = [1, 2]");
        assert_eq!(
            KafkaProperties::resolve(&spec, &none, &[], &[]),
            Err(PropertyError::Value {
                key: "sasl.kerberos.min".into()
            })
        );
    }

    #[test]
    fn a_missing_or_empty_secret_file_names_the_file_not_a_value() {
        let none = toml::Table::new();
        let missing = std::env::temp_dir().join("fleetwatch-no-such-secret");
        let e = KafkaProperties::resolve(
            &none,
            &none,
            &[],
            &[format!("sasl.password={}", missing.display())],
        )
        .unwrap_err();
        assert!(matches!(e, PropertyError::SecretFile { .. }));
        assert!(e.to_string().contains("fleetwatch-no-such-secret"), "{e}");
        let empty = secret_file("empty", "\n");
        let e = KafkaProperties::resolve(
            &none,
            &none,
            &[],
            &[format!("sasl.password={}", empty.display())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn which_keys_are_secret() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in [
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "ssl.certificate.pem",
        ] {
            assert!(!is_secret(k), "{k}");
        }
    }
}
