//! The configuration file (TOML), read key by key so that every mistake is
//! reported at once, each with its line and column.
//!
//! Top-level keys are the command line's options under their own names
//! (`redirect_http` for `--redirect-http`): each becomes the flag it names,
//! checked by clap's parser for that flag, so the file and the command line
//! cannot disagree on what a value means. Flags given on the command line
//! or in the environment win over the file's keys. The file's own sections
//! (`[[certificate]]`, `[upstream.NAME]`, `[[route]]`) are read here into
//! specs, which `config` resolves against the top-level settings.

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Arg, ArgAction, Command, ValueEnum};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::cli::ByteSize;
use crate::tls::{self, CertPair, CertSource};
use crate::upstream::Balance;

/// Options that make no sense in a file.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// One problem in a configuration file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    /// 1-based line and column (in characters); None for the whole file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// A value and where the file gave it.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// `[upstream.NAME]`: keys left out take the top-level settings.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: At<String>,
    pub targets: Vec<At<String>>,
    pub balance: Option<Balance>,
    pub health_check: Option<At<String>>,
    pub health_interval: Option<Duration>,
}

/// `[[route]]`: keys left out take the top-level settings.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// The whole table, for errors about it as a whole.
    pub span: Range<usize>,
    pub host: Option<At<String>>,
    pub path: Option<At<String>>,
    pub upstream: Option<At<String>>,
    pub strip_prefix: bool,
    /// Lower-case name and value; an empty value removes the field.
    pub response_headers: Vec<At<(String, String)>>,
    pub websocket: Option<bool>,
    pub websocket_idle_timeout: Option<Duration>,
    pub max_body: Option<u64>,
    pub request_timeout: Option<Duration>,
    pub sse_idle_timeout: Option<Duration>,
    pub sse_heartbeat: Option<Duration>,
    pub sse_shared: Option<bool>,
    pub sse_redis: Option<bool>,
    pub sse_replay: Option<usize>,
    pub drain_retry: Option<Duration>,
}

/// What a file says, checked key by key.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    text: String,
    /// The top-level options not given on the command line or in the
    /// environment, as flags (`--name=value`), in file order.
    pub flags: Vec<OsString>,
    pub upstreams: Vec<GroupSpec>,
    pub routes: Vec<RouteSpec>,
}

impl ConfigFile {
    /// Reads and checks `path`. `cmd` is the command whose options the
    /// top-level keys name; `given_elsewhere(id)` says whether an option
    /// was set on the command line or in the environment (then the file's
    /// key is checked but not used).
    pub fn load(
        path: &Path,
        cmd: &Command,
        given_elsewhere: impl Fn(&str) -> bool,
    ) -> Result<Self, Vec<FileError>> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            vec![FileError {
                path: path.to_owned(),
                at: None,
                message: format!("cannot read the configuration file: {err}"),
            }]
        })?;
        Self::parse(path, text, cmd, given_elsewhere)
    }

    pub fn parse(
        path: &Path,
        text: String,
        cmd: &Command,
        given_elsewhere: impl Fn(&str) -> bool,
    ) -> Result<Self, Vec<FileError>> {
        let mut reader = Reader {
            flags: Vec::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            errors: Vec::new(),
        };
        {
            let (table, syntax) = DeTable::parse_recoverable(&text);
            for err in syntax {
                reader.error(err.span().unwrap_or(0..0), err.message().trim().to_owned());
            }
            reader.top_level(table.get_ref(), cmd, &given_elsewhere);
        }
        let mut errors = std::mem::take(&mut reader.errors);
        let file = ConfigFile {
            path: path.to_owned(),
            text,
            flags: reader.flags,
            upstreams: reader.upstreams,
            routes: reader.routes,
        };
        if errors.is_empty() {
            return Ok(file);
        }
        errors.sort_by_key(|(span, _)| span.start);
        Err(errors
            .into_iter()
            .map(|(span, message)| file.error(span, message))
            .collect())
    }

    /// An error about the text at `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> FileError {
        FileError {
            path: self.path.clone(),
            at: Some(line_and_column(&self.text, span.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

struct Reader {
    flags: Vec<OsString>,
    upstreams: Vec<GroupSpec>,
    routes: Vec<RouteSpec>,
    errors: Vec<(Range<usize>, String)>,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Reader {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    fn top_level(
        &mut self,
        table: &DeTable<'_>,
        cmd: &Command,
        given_elsewhere: &impl Fn(&str) -> bool,
    ) {
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            match name {
                "certificate" => {
                    let skip = given_elsewhere("cert") || given_elsewhere("key");
                    self.certificates(value, skip);
                }
                "upstream" if matches!(value.get_ref(), DeValue::Table(_)) => self.groups(value),
                "route" => self.routes(value),
                "cluster" if matches!(value.get_ref(), DeValue::Table(_)) => {
                    self.cluster(value, cmd, given_elsewhere)
                }
                _ => match cmd.get_arguments().find(|arg| {
                    arg.get_id() == name && !arg.is_positional() && !NOT_IN_FILE.contains(&name)
                }) {
                    Some(arg) => self.option(arg, value, given_elsewhere(name)),
                    None => self.error(key.span(), unknown_key(name, "at the top level")),
                },
            }
        }
    }

    /// A top-level option: checked by clap's parser for its flag, and kept
    /// as that flag unless `skip`.
    fn option(&mut self, arg: &Arg, value: &Value<'_>, skip: bool) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            return self.error(value.span(), format!("`{id}` cannot be set in a file"));
        };
        let mut flags = Vec::new();
        match (arg.get_action(), value.get_ref()) {
            (ArgAction::SetTrue, DeValue::Boolean(on)) => {
                if *on {
                    flags.push(OsString::from(format!("--{long}")));
                }
            }
            (ArgAction::SetTrue, _) => {
                return self.error(value.span(), format!("`{id}` takes true or false"))
            }
            (ArgAction::Append, DeValue::Array(items)) => {
                for item in items.iter() {
                    match scalar(item.get_ref()) {
                        Some(text) => {
                            if let Err(reason) = check_flag_value(arg, long, &text) {
                                self.error(item.span(), format!("`{id}`: {reason}"));
                            }
                            flags.push(OsString::from(format!("--{long}={text}")));
                        }
                        None => self.error(item.span(), format!("`{id}` takes a list of values")),
                    }
                }
            }
            (_, other) => match scalar(other) {
                Some(text) => {
                    if let Err(reason) = check_flag_value(arg, long, &text) {
                        self.error(value.span(), format!("`{id}`: {reason}"));
                    }
                    flags.push(OsString::from(format!("--{long}={text}")));
                }
                None => self.error(
                    value.span(),
                    format!("`{id}` takes one value, not {}", other.type_str()),
                ),
            },
        }
        if !skip {
            self.flags.extend(flags);
        }
    }

    /// `[cluster]`: `redis`, `key_prefix`, `lease`, read as the options
    /// `--cluster`, `--cluster-key-prefix`, `--cluster-lease`.
    fn cluster(
        &mut self,
        value: &Value<'_>,
        cmd: &Command,
        given_elsewhere: &impl Fn(&str) -> bool,
    ) {
        let DeValue::Table(table) = value.get_ref() else {
            return;
        };
        for (key, value) in table.iter() {
            let id = match key.get_ref().as_ref() {
                "redis" => "cluster",
                "key_prefix" => "cluster_key_prefix",
                "lease" => "cluster_lease",
                other => {
                    self.error(key.span(), unknown_key(other, "in [cluster]"));
                    continue;
                }
            };
            if let Some(arg) = cmd.get_arguments().find(|arg| arg.get_id() == id) {
                self.option(arg, value, given_elsewhere(id));
            }
        }
    }

    /// `[[certificate]]`: each pair is loaded as at start-up (keys must
    /// match their certificates), then becomes `--cert`, `--key`, `--ocsp`.
    fn certificates(&mut self, value: &Value<'_>, skip: bool) {
        for table in self.tables_of(value, "[[certificate]]") {
            let mut keys = Keys::new(
                self,
                table.get_ref(),
                "[[certificate]]",
                &["cert", "key", "ocsp"],
            );
            let cert = keys.string("cert", true);
            let key = keys.string("key", true);
            let ocsp = keys.string("ocsp", false);
            let (Some(cert), Some(key)) = (cert, key) else {
                continue;
            };
            let source = CertSource {
                pair: CertPair {
                    cert: PathBuf::from(&cert.value),
                    key: PathBuf::from(&key.value),
                },
                ocsp: ocsp.as_ref().map(|ocsp| PathBuf::from(&ocsp.value)),
            };
            if let Err(err) = tls::load_source(&source) {
                self.error(cert.span.clone(), err.to_string());
            }
            if !skip {
                self.flags.push(format!("--cert={}", cert.value).into());
                self.flags.push(format!("--key={}", key.value).into());
                if let Some(ocsp) = ocsp {
                    self.flags.push(format!("--ocsp={}", ocsp.value).into());
                }
            }
        }
    }

    /// `[upstream.NAME]` tables.
    fn groups(&mut self, value: &Value<'_>) {
        let DeValue::Table(groups) = value.get_ref() else {
            return;
        };
        for (name, group) in groups.iter() {
            let name = At {
                value: name.get_ref().to_string(),
                span: name.span(),
            };
            let DeValue::Table(table) = group.get_ref() else {
                self.error(name.span, "an upstream group is a table: [upstream.NAME]");
                continue;
            };
            let context = format!("[upstream.{}]", name.value);
            let mut keys = Keys::new(
                self,
                table,
                &context,
                &["targets", "balance", "health_check", "health_interval"],
            );
            let targets = keys.strings("targets");
            let balance = keys.parsed("balance", |text| {
                Balance::from_str(text, true)
                    .map_err(|_| "expected least-conn, round-robin, ip-hash or random".to_owned())
            });
            let health_check = keys.string("health_check", false);
            let health_interval = keys.duration("health_interval");
            if targets.is_empty() && !keys.missing_reported {
                keys.reader.error(
                    name.span.clone(),
                    format!("{context}: `targets` is required"),
                );
            }
            self.upstreams.push(GroupSpec {
                name,
                targets,
                balance,
                health_check,
                health_interval,
            });
        }
    }

    /// `[[route]]` tables.
    fn routes(&mut self, value: &Value<'_>) {
        for table in self.tables_of(value, "[[route]]") {
            let span = table.span();
            let mut keys = Keys::new(self, table.get_ref(), "[[route]]", ROUTE_KEYS);
            let route = RouteSpec {
                span,
                host: keys.string("host", false),
                path: keys.string("path", true),
                upstream: keys.string("upstream", false),
                strip_prefix: keys.bool("strip_prefix").unwrap_or(false),
                response_headers: keys.string_table("response_headers"),
                websocket: keys.bool("websocket"),
                websocket_idle_timeout: keys.duration("websocket_idle_timeout"),
                max_body: keys.size("max_body"),
                request_timeout: keys.duration("request_timeout"),
                sse_idle_timeout: keys.duration("sse_idle_timeout"),
                sse_heartbeat: keys.duration("sse_heartbeat"),
                sse_shared: keys.bool("sse_shared"),
                sse_redis: keys.bool("sse_redis"),
                sse_replay: keys.parsed("sse_replay", |text| {
                    text.parse::<usize>()
                        .map_err(|_| "expected a number of events".to_owned())
                }),
                drain_retry: keys.duration("drain_retry"),
            };
            self.routes.push(route);
        }
    }

    /// The tables of an array of tables (`[[name]]`), or of one table.
    fn tables_of<'i>(&mut self, value: &Value<'i>, context: &str) -> Vec<Spanned<DeTable<'i>>> {
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(table) => Some(Spanned::new(item.span(), table.clone())),
                    _ => {
                        self.error(item.span(), format!("{context} entries are tables"));
                        None
                    }
                })
                .collect(),
            DeValue::Table(table) => vec![Spanned::new(value.span(), table.clone())],
            _ => {
                self.error(value.span(), format!("expected {context} tables"));
                Vec::new()
            }
        }
    }
}

/// Every key a `[[route]]` may have.
const ROUTE_KEYS: &[&str] = &[
    "host",
    "path",
    "upstream",
    "strip_prefix",
    "response_headers",
    "websocket",
    "websocket_idle_timeout",
    "max_body",
    "request_timeout",
    "sse_idle_timeout",
    "sse_heartbeat",
    "sse_shared",
    "sse_redis",
    "sse_replay",
    "drain_retry",
];

fn unknown_key(name: &str, context: &str) -> String {
    format!("unknown key `{name}` {context}")
}

/// A string, integer or float as the text a flag would carry.
fn scalar(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(float) => Some(float.as_str().to_owned()),
        _ => None,
    }
}

/// Checks `text` with the parser of the flag `--long` alone, so a file's
/// value means what the same value means on the command line.
fn check_flag_value(arg: &Arg, long: &str, text: &str) -> Result<(), String> {
    let mut probe = Arg::new("value")
        .long(long.to_owned())
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set);
    if let Some(possible) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(possible).action(ArgAction::Append);
    }
    Command::new("ssegate")
        .arg(probe)
        .try_get_matches_from(["ssegate".to_owned(), format!("--{long}={text}")])
        .map(drop)
        .map_err(|err| {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        })
}

/// The keys of one section's table, read by type; every key not read by
/// the end is reported as unknown.
struct Keys<'r, 't, 'i> {
    reader: &'r mut Reader,
    table: &'t DeTable<'i>,
    context: String,
    missing_reported: bool,
    span: Range<usize>,
}

impl<'r, 't, 'i> Keys<'r, 't, 'i> {
    fn new(reader: &'r mut Reader, table: &'t DeTable<'i>, context: &str, known: &[&str]) -> Self {
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if !known.contains(&name) {
                reader.error(key.span(), unknown_key(name, &format!("in {context}")));
            }
        }
        let span = table
            .keys()
            .map(|key| key.span())
            .min_by_key(|span| span.start)
            .unwrap_or(0..0);
        Keys {
            reader,
            table,
            context: context.to_owned(),
            missing_reported: false,
            span,
        }
    }

    fn get(&self, name: &str) -> Option<&'t Value<'i>> {
        self.table.get(name)
    }

    fn string(&mut self, name: &str, required: bool) -> Option<At<String>> {
        match self.get(name) {
            Some(value) => match value.get_ref() {
                DeValue::String(text) => Some(At {
                    value: text.to_string(),
                    span: value.span(),
                }),
                other => {
                    let message = format!(
                        "{}: `{name}` takes a string, not {}",
                        self.context,
                        other.type_str()
                    );
                    self.reader.error(value.span(), message);
                    None
                }
            },
            None if required => {
                let message = format!("{}: `{name}` is required", self.context);
                self.reader.error(self.span.clone(), message);
                self.missing_reported = true;
                None
            }
            None => None,
        }
    }

    /// A list of strings (or one string).
    fn strings(&mut self, name: &str) -> Vec<At<String>> {
        let Some(value) = self.get(name) else {
            return Vec::new();
        };
        let items: Vec<&Value<'i>> = match value.get_ref() {
            DeValue::Array(items) => items.iter().collect(),
            _ => vec![value],
        };
        let mut strings = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(text) => strings.push(At {
                    value: text.to_string(),
                    span: item.span(),
                }),
                other => {
                    let message = format!(
                        "{}: `{name}` takes strings, not {}",
                        self.context,
                        other.type_str()
                    );
                    self.reader.error(item.span(), message);
                }
            }
        }
        strings
    }

    fn bool(&mut self, name: &str) -> Option<bool> {
        let value = self.get(name)?;
        match value.get_ref() {
            DeValue::Boolean(on) => Some(*on),
            _ => {
                let message = format!("{}: `{name}` takes true or false", self.context);
                self.reader.error(value.span(), message);
                None
            }
        }
    }

    /// A value given as text (or a number), parsed by `parse`.
    fn parsed<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let value = self.get(name)?;
        let result = scalar(value.get_ref())
            .ok_or_else(|| format!("not {}", value.get_ref().type_str()))
            .and_then(|text| parse(&text));
        match result {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                let message = format!("{}: `{name}`: {reason}", self.context);
                self.reader.error(value.span(), message);
                None
            }
        }
    }

    fn duration(&mut self, name: &str) -> Option<Duration> {
        self.parsed(name, |text| {
            humantime::parse_duration(text)
                .map_err(|err| format!("{text:?} is not a duration (e.g. 15s, 1h): {err}"))
        })
    }

    fn size(&mut self, name: &str) -> Option<u64> {
        self.parsed(name, |text| {
            ByteSize::from_str(text).map(|size| size.0 as u64)
        })
    }

    /// A table of strings: `{ "Name" = "value" }`.
    fn string_table(&mut self, name: &str) -> Vec<At<(String, String)>> {
        let Some(value) = self.get(name) else {
            return Vec::new();
        };
        let DeValue::Table(table) = value.get_ref() else {
            let message = format!("{}: `{name}` takes a table of strings", self.context);
            self.reader.error(value.span(), message);
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (key, item) in table.iter() {
            match item.get_ref() {
                DeValue::String(text) => pairs.push(At {
                    value: (key.get_ref().to_ascii_lowercase(), text.to_string()),
                    span: key.span(),
                }),
                _ => {
                    let message = format!("{}: `{name}` values are strings", self.context);
                    self.reader.error(item.span(), message);
                }
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(text: &str) -> Result<ConfigFile, Vec<FileError>> {
        ConfigFile::parse(
            Path::new("ssegate.toml"),
            text.to_owned(),
            &crate::cli::Cli::command(),
            |_| false,
        )
    }

    fn messages(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn top_level_keys_become_the_flags_they_name() {
        let file = parse(
            "listen = \"127.0.0.1:8443\"\nthreads = 2\nkeep_underscore_headers = true\nsse_shared = [\"/a\", \"/b\"]\nhsts_preload = false\n",
        )
        .unwrap();
        let flags: Vec<_> = file
            .flags
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            flags,
            [
                "--keep-underscore-headers",
                "--listen=127.0.0.1:8443",
                "--sse-shared=/a",
                "--sse-shared=/b",
                "--threads=2"
            ]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_line_and_column() {
        let errors = messages(
            "listen = \"nowhere\"\nbogus = 1\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\ncolour = \"red\"\nsse_heartbeat = \"soon\"\n",
        );
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].starts_with("ssegate.toml:1:10: `listen`: invalid value"),
            "{}",
            errors[0]
        );
        assert_eq!(
            errors[1],
            "ssegate.toml:2:1: unknown key `bogus` at the top level"
        );
        assert_eq!(
            errors[2],
            "ssegate.toml:7:1: unknown key `colour` in [[route]]"
        );
        assert!(
            errors[3].starts_with(
                "ssegate.toml:8:17: [[route]]: `sse_heartbeat`: \"soon\" is not a duration"
            ),
            "{}",
            errors[3]
        );
    }

    #[test]
    fn syntax_errors_have_positions_too() {
        let errors = messages("listen = \n");
        assert!(errors[0].starts_with("ssegate.toml:1:"), "{errors:?}");
    }

    #[test]
    fn sections_are_read_into_specs() {
        let file = parse(
            "[upstream.app]\ntargets = [\"http://127.0.0.1:3000\", \"http://127.0.0.1:3001\"]\nbalance = \"round-robin\"\nhealth_interval = \"2s\"\n\n[[route]]\nhost = \"*.example.com\"\npath = \"/live/\"\nupstream = \"app\"\nsse_shared = true\nmax_body = \"64k\"\nresponse_headers = { \"X-Frame-Options\" = \"DENY\", \"Server\" = \"\" }\n",
        )
        .unwrap();
        let group = &file.upstreams[0];
        assert_eq!(group.name.value, "app");
        assert_eq!(group.targets.len(), 2);
        assert_eq!(group.balance, Some(Balance::RoundRobin));
        assert_eq!(group.health_interval, Some(Duration::from_secs(2)));
        let route = &file.routes[0];
        assert_eq!(route.path.as_ref().unwrap().value, "/live/");
        assert_eq!(route.sse_shared, Some(true));
        assert_eq!(route.max_body, Some(65536));
        let headers: Vec<_> = route
            .response_headers
            .iter()
            .map(|h| h.value.clone())
            .collect();
        assert!(headers.contains(&("x-frame-options".into(), "DENY".into())));
        assert!(headers.contains(&("server".into(), String::new())));
    }

    #[test]
    fn options_given_elsewhere_are_checked_but_not_used() {
        let file = ConfigFile::parse(
            Path::new("f.toml"),
            "listen = \"127.0.0.1:1\"\nthreads = 3\n".into(),
            &crate::cli::Cli::command(),
            |id| id == "listen",
        )
        .unwrap();
        assert_eq!(file.flags, [OsString::from("--threads=3")]);
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(line_and_column("ab\ncdé f", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncdé f", 3), (2, 1));
        assert_eq!(line_and_column("ab\ncdé f", 8), (2, 5));
    }
}
