//! `nubo server create`, and `--wait`: follow a batch until every instance is
//! running or in error, with one List call per poll (name-prefix filtered,
//! paginated), never one Get per instance.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nubo_common::proto::{CreateServerRequest, ListServersRequest, Server, ServerResult};
use serde_json::{json, Value};

use crate::api::{Call, PAGE_SIZE};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Format, Table};

use super::networks_text;

/// `nubo server create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Server name (with --count > 1, instances are named NAME-<n>).
    pub name: String,
    /// Flavor name.
    #[arg(long)]
    pub flavor: String,
    /// Image name or id (optional with --boot-volume of a volume made from
    /// an image).
    #[arg(long, default_value = "", required_unless_present = "boot_volume")]
    pub image: String,
    /// Existing volume (name or id) to attach at create; repeatable
    /// (only with --count 1).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Boot from this existing volume (name or id) instead of a root disk.
    #[arg(long, conflicts_with = "boot_from_volume")]
    pub boot_volume: Option<String>,
    /// Boot from a new volume of this size (e.g. 20G) cloned from --image.
    #[arg(long, value_parser = crate::volume_size::parse_size_gb)]
    pub boot_from_volume: Option<i64>,
    /// Delete the boot volume and the --volume ones with the server.
    #[arg(long)]
    pub delete_on_termination: bool,
    /// Network (name or id) to create a port on; repeat for more NICs.
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// Existing port (name or id) to plug, after the --network ones; repeatable.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// Security group for the ports created from --network (repeatable;
    /// default: the project's "default" group).
    #[arg(long = "security-group")]
    pub security_groups: Vec<String>,
    /// Keypair whose public key the metadata service serves.
    #[arg(long)]
    pub key_name: Option<String>,
    /// File with user data (cloud-init) for the instances.
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Metadata item KEY=VALUE of the servers (served to the guest as
    /// `meta`); repeatable.
    #[arg(long = "property", value_parser = super::key_value)]
    pub properties: Vec<(String, String)>,
    /// Number of instances.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Availability zone to place the instances in.
    #[arg(long)]
    pub availability_zone: Option<String>,
    /// Server group (name or id) the instances join.
    #[arg(long)]
    pub server_group: Option<String>,
    /// Place on a node holding this server (name or id); repeatable: any
    /// of them (OpenStack's `same_host` hint).
    #[arg(long)]
    pub same_host: Vec<String>,
    /// Place on no node holding this server (name or id); repeatable
    /// (OpenStack's `different_host` hint).
    #[arg(long)]
    pub different_host: Vec<String>,
    /// What happens when the server's node fails: auto (restarted elsewhere),
    /// manual (only by `nubo node evacuate`) or never. Default: the cluster's.
    #[arg(long, value_parser = ["auto", "manual", "never"])]
    pub evacuation_policy: Option<String>,
    /// Create the servers powered off.
    #[arg(long)]
    pub stopped: bool,
    /// Wait until every instance is running or in error.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600, requires = "wait")]
    pub timeout: u64,
    /// Idempotency token (default: a new random one per invocation). The
    /// create is retried once with it when the API is unavailable, and a
    /// rerun with the same token returns the servers already created.
    #[arg(long)]
    pub client_token: Option<String>,
}

impl CreateArgs {
    /// The API request for `project`, with the user data already read.
    pub fn request(&self, project: &str, user_data: Vec<u8>, token: &str) -> CreateServerRequest {
        CreateServerRequest {
            name: self.name.clone(),
            project: project.to_string(),
            flavor: self.flavor.clone(),
            image_ref: self.image.clone(),
            networks: self.networks.clone(),
            ports: self.ports.clone(),
            security_groups: self.security_groups.clone(),
            key_name: self.key_name.clone().unwrap_or_default(),
            user_data,
            count: self.count,
            availability_zone: self.availability_zone.clone().unwrap_or_default(),
            server_group: self.server_group.clone().unwrap_or_default(),
            stopped: self.stopped,
            evacuation_policy: self.evacuation_policy.clone().unwrap_or_default(),
            client_token: token.to_string(),
            volumes: self.volumes.clone(),
            boot_volume: self.boot_volume.clone().unwrap_or_default(),
            // Negative sizes were refused by the parser.
            boot_from_volume_size_gb: self
                .boot_from_volume
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or_default(),
            delete_on_termination: self.delete_on_termination,
            metadata: self.properties.iter().cloned().collect(),
            same_host: self.same_host.clone(),
            different_host: self.different_host.clone(),
            ..Default::default()
        }
    }

    /// The token of this invocation: `--client-token`, or a new random one.
    pub fn token(&self) -> String {
        self.client_token
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Pauses before the retries of a create that met an unavailable API (the
/// same client token each time).
const CREATE_RETRIES: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// A create that failed this way may not have reached (or may have been
/// cut off inside) a coordinator: retrying with the same client token is
/// safe and cannot duplicate servers.
pub fn retryable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// A call that failed this way may work when made again (the API or etcd
/// was briefly unavailable, the connection broke): polls retry it.
pub fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Aborted
    )
}

/// The fate of one requested instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Index in the batch.
    pub index: u32,
    /// The server as last seen; `None` if it was never created.
    pub server: Option<Server>,
    /// Why it failed (creation error or the agent's last error).
    pub error: String,
    /// gRPC code name of a creation failure.
    pub code: String,
}

impl Outcome {
    fn from_result(r: ServerResult) -> Self {
        Self {
            index: r.index,
            error: match &r.server {
                Some(s) => s.last_error.clone(),
                None => r.error,
            },
            server: r.server,
            code: r.code,
        }
    }

    /// "running", "error", "building", … or "not created".
    pub fn state(&self) -> &str {
        self.server
            .as_ref()
            .map_or("not created", |s| s.state.as_str())
    }

    fn failed(&self) -> bool {
        matches!(self.state(), "not created" | "error")
    }

    fn to_json(&self) -> Value {
        let s = self.server.as_ref();
        json!({
            "index": self.index,
            "id": s.map(|s| s.id.as_str()),
            "name": s.map(|s| s.name.as_str()),
            "state": self.state(),
            "node": s.map(|s| opt(&s.node)),
            "networks": s.map(networks_text),
            "error": opt(&self.error),
            "code": opt(&self.code),
        })
    }
}

/// Counts of a batch by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Instances created (placed).
    pub created: usize,
    /// Running.
    pub running: usize,
    /// In error.
    pub error: usize,
    /// Anything else (pending, building, …).
    pub building: usize,
    /// Refused at creation.
    pub not_created: usize,
}

impl Tally {
    /// Counts `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut t = Self::default();
        for o in outcomes {
            match o.state() {
                "not created" => t.not_created += 1,
                "running" => t.running += 1,
                "error" => t.error += 1,
                _ => t.building += 1,
            }
        }
        t.created = outcomes.len() - t.not_created;
        t
    }

    /// `12/120 running, 0 error, 108 building…`
    pub fn progress(&self) -> String {
        format!(
            "{}/{} running, {} error, {} building…",
            self.running, self.created, self.error, self.building
        )
    }

    /// `120 requested: 118 running, 1 error, 1 not created`
    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!("{} running", self.running),
            format!("{} error", self.error),
        ];
        if self.building > 0 {
            parts.push(format!("{} still building", self.building));
        }
        if self.not_created > 0 {
            parts.push(format!("{} not created", self.not_created));
        }
        format!(
            "{} requested: {}",
            self.created + self.not_created,
            parts.join(", ")
        )
    }
}

/// The per-instance results table.
pub fn table(outcomes: &[Outcome]) -> Table {
    let mut t = Table::new(&["#", "ID", "Name", "Status", "Node", "Networks", "Error"]);
    for o in outcomes {
        let s = o.server.as_ref();
        let error = match (o.error.is_empty(), o.code.is_empty()) {
            (true, _) => String::new(),
            (false, true) => o.error.clone(),
            (false, false) => format!("{} ({})", o.error, o.code),
        };
        t.row(vec![
            o.index.to_string(),
            s.map(|s| s.id.clone()).unwrap_or_default(),
            s.map(|s| s.name.clone()).unwrap_or_default(),
            o.state().to_string(),
            s.map(|s| s.node.clone()).unwrap_or_default(),
            s.map(networks_text).unwrap_or_default(),
            error,
        ]);
    }
    t
}

fn print(format: Format, outcomes: &[Outcome], tally: Tally) -> Result<()> {
    match format {
        Format::Json => output::emit_json(&json!({
            "servers": outcomes.iter().map(Outcome::to_json).collect::<Vec<_>>(),
            "summary": {
                "requested": tally.created + tally.not_created,
                "created": tally.created,
                "running": tally.running,
                "error": tally.error,
                "building": tally.building,
                "not_created": tally.not_created,
            },
        })),
        Format::Table => output::emit(&format!(
            "{}{}\n",
            table(outcomes).render(),
            tally.summary()
        )),
    }
}

/// Runs `server create`.
pub async fn run(args: CreateArgs, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let user_data = match &args.user_data {
        None => Vec::new(),
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    };
    let req = args.request(&api.project, user_data, &args.token());
    let mut pauses = CREATE_RETRIES.iter();
    let resp = loop {
        match api.servers().create(req.clone()).await {
            Err(status) if retryable(&status) => match pauses.next() {
                Some(d) => {
                    eprintln!(
                        "warning: {}; retrying in {d:?} with the same client token",
                        crate::api::one_line(status.message())
                    );
                    tokio::time::sleep(*d).await;
                }
                None => break Err(status),
            },
            other => break other,
        }
    }
    .or_fail(api)?;
    let mut outcomes: Vec<Outcome> = resp.results.into_iter().map(Outcome::from_result).collect();
    outcomes.sort_by_key(|o| o.index);
    let mut end = WaitEnd::Done;
    if args.wait {
        end = wait(
            ctx,
            &args.name,
            &mut outcomes,
            Duration::from_secs(args.timeout),
        )
        .await;
    }
    // Whatever happened while waiting, every instance's outcome is shown.
    let tally = Tally::of(&outcomes);
    print(ctx.format, &outcomes, tally)?;
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    match end {
        WaitEnd::Done => {}
        WaitEnd::TimedOut { last_error } => bail!(
            "timed out after {}s with {} of {} instances not running{}",
            args.timeout,
            outcomes.len() - tally.running,
            outcomes.len(),
            last_error
                .map(|e| format!(" (last poll failed: {e})"))
                .unwrap_or_default()
        ),
        WaitEnd::Failed(e) => {
            return Err(e.context(format!(
                "stopped waiting: {} of {} instances not known to run (states above as last seen)",
                outcomes.len() - tally.running,
                outcomes.len()
            )))
        }
    }
    if failed > 0 {
        bail!("{failed} of {} instances failed", outcomes.len());
    }
    Ok(())
}

/// How waiting ended.
#[derive(Debug)]
enum WaitEnd {
    /// Every created instance is running or in error.
    Done,
    /// Out of time (with the last poll's error if it failed).
    TimedOut {
        /// The last poll's error, if the last poll failed.
        last_error: Option<String>,
    },
    /// A poll failed with an error that retrying cannot fix.
    Failed(anyhow::Error),
}

/// Every server whose name starts with `base.name_prefix`, all pages; the
/// raw status on failure (so that the caller can tell transient errors).
async fn list_servers(
    api: &crate::api::Api,
    base: &ListServersRequest,
) -> std::result::Result<Vec<Server>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = api
            .servers()
            .list(ListServersRequest {
                page_token: token.clone(),
                ..base.clone()
            })
            .await?
            .into_inner();
        out.extend(r.servers);
        if r.next_page_token.is_empty() || r.next_page_token == token {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// Polls until every created instance is running or in error; progress
/// goes to stderr (one rewritten line on a terminal, a line every few
/// seconds otherwise). A poll that fails with a transient error (the API or
/// etcd briefly unavailable) is retried at the next tick; the outcomes keep
/// the states last seen.
async fn wait(ctx: &Ctx, name: &str, outcomes: &mut [Outcome], timeout: Duration) -> WaitEnd {
    let api = &ctx.api;
    let tty = std::io::stderr().is_terminal();
    let base = ListServersRequest {
        page_size: PAGE_SIZE,
        project: api.project.clone(),
        name_prefix: name.to_string(),
        ..Default::default()
    };
    let started = Instant::now();
    let mut last_line: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let listed: HashMap<String, Server> = match list_servers(api, &base).await {
            Ok(l) => {
                if let Some(e) = last_error.take() {
                    eprintln!("polling works again (it failed with: {e})");
                }
                l.into_iter().map(|s| (s.id.clone(), s)).collect()
            }
            Err(status) if transient(&status) => {
                let msg = crate::api::one_line(status.message());
                if last_error.is_none() {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("warning: polling failed ({msg}); retrying");
                }
                last_error = Some(msg);
                if started.elapsed() >= timeout {
                    if tty {
                        eprintln!();
                    }
                    return WaitEnd::TimedOut { last_error };
                }
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            Err(status) => {
                if tty {
                    eprintln!();
                }
                return WaitEnd::Failed(api.error(status));
            }
        };
        for o in outcomes.iter_mut() {
            let Some(prev) = &o.server else { continue };
            match listed.get(&prev.id) {
                Some(s) => {
                    o.error = s.last_error.clone();
                    o.server = Some(s.clone());
                }
                None => {
                    let mut s = prev.clone();
                    s.state = "error".into();
                    o.error = "deleted while waiting".into();
                    o.server = Some(s);
                }
            }
        }
        let tally = Tally::of(outcomes);
        let done = tally.building == 0;
        let out_of_time = started.elapsed() >= timeout;
        if tty {
            eprint!("\r\x1b[2K{}", tally.progress());
            if done || out_of_time {
                eprintln!();
            }
        } else if done || out_of_time || last_line.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            eprintln!("{}", tally.progress());
            last_line = Some(Instant::now());
        }
        if done {
            return WaitEnd::Done;
        }
        if out_of_time {
            return WaitEnd::TimedOut { last_error: None };
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Pause between two List polls.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Progress line period when stderr is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        crate::testutil::parse_args(args)
    }

    #[test]
    fn unknown_evacuation_policy_is_rejected() {
        assert!(parse(&[
            "web",
            "--flavor",
            "f",
            "--image",
            "i",
            "--evacuation-policy",
            "sometimes"
        ])
        .is_err());
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let a = parse(&[
            "web",
            "--flavor",
            "m1.small",
            "--image",
            "cirros",
            "--network",
            "front",
            "--network",
            "back",
            "--port",
            "p-fixed",
            "--security-group",
            "web",
            "--key-name",
            "op",
            "--count",
            "120",
            "--availability-zone",
            "az2",
            "--server-group",
            "spread",
            "--same-host",
            "db",
            "--different-host",
            "web-1",
            "--different-host",
            "web-2",
            "--evacuation-policy",
            "never",
            "--property",
            "role=web",
            "--property",
            "note=a=b",
            "--wait",
            "--timeout",
            "30",
        ])
        .unwrap();
        assert!(a.wait);
        assert_eq!(a.timeout, 30);
        assert_eq!(
            a.request("p", b"#cloud-config\n".to_vec(), "tok-1"),
            CreateServerRequest {
                name: "web".into(),
                project: "p".into(),
                flavor: "m1.small".into(),
                image_ref: "cirros".into(),
                networks: vec!["front".into(), "back".into()],
                ports: vec!["p-fixed".into()],
                security_groups: vec!["web".into()],
                key_name: "op".into(),
                user_data: b"#cloud-config\n".to_vec(),
                count: 120,
                availability_zone: "az2".into(),
                server_group: "spread".into(),
                same_host: vec!["db".into()],
                different_host: vec!["web-1".into(), "web-2".into()],
                stopped: false,
                evacuation_policy: "never".into(),
                client_token: "tok-1".into(),
                metadata: [("role", "web"), ("note", "a=b")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_invocation_gets_its_own_token_unless_one_is_given() {
        let base = ["w", "--flavor", "f", "--image", "i"];
        let a = parse(&base).unwrap();
        let (t1, t2) = (a.token(), a.token());
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 32);
        assert!(t1.chars().all(|c| c.is_ascii_hexdigit()));
        let b = parse(&[&base[..], &["--client-token", "mine"]].concat()).unwrap();
        assert_eq!(b.token(), "mine");
        assert_eq!(b.request("", Vec::new(), &b.token()).client_token, "mine");
    }

    #[test]
    fn only_unavailable_is_retried() {
        assert!(retryable(&tonic::Status::unavailable("down")));
        assert!(!retryable(&tonic::Status::resource_exhausted("full")));
        assert!(!retryable(&tonic::Status::invalid_argument("bad")));
    }

    #[test]
    fn count_must_be_positive_and_timeout_needs_wait() {
        let base = ["w", "--flavor", "f", "--image", "i"];
        assert_eq!(parse(&base).unwrap().count, 1);
        assert!(parse(&[&base[..], &["--count", "0"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--timeout", "5"]].concat()).is_err());
    }

    fn outcome(index: u32, state: Option<&str>, error: &str) -> Outcome {
        Outcome {
            index,
            server: state.map(|st| Server {
                id: format!("id-{index}"),
                name: format!("web-{index}"),
                state: st.into(),
                ..Default::default()
            }),
            error: error.into(),
            code: if state.is_none() {
                "ResourceExhausted".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn tally_progress_and_summary() {
        let o = vec![
            outcome(0, Some("running"), ""),
            outcome(1, Some("building"), ""),
            outcome(2, Some("pending"), ""),
            outcome(3, Some("error"), "image not found on node"),
            outcome(4, None, "no node has room for flavor m1.small"),
        ];
        let t = Tally::of(&o);
        assert_eq!(
            t,
            Tally {
                created: 4,
                running: 1,
                error: 1,
                building: 2,
                not_created: 1
            }
        );
        assert_eq!(t.progress(), "1/4 running, 1 error, 2 building…");
        assert_eq!(
            t.summary(),
            "5 requested: 1 running, 1 error, 2 still building, 1 not created"
        );
        assert_eq!(o.iter().filter(|o| o.failed()).count(), 2);
    }

    #[test]
    fn results_show_failures_with_their_reason() {
        let o = vec![
            outcome(0, Some("running"), ""),
            outcome(1, None, "no node has room"),
        ];
        let text = table(&o).render();
        assert!(text.contains("| not created | "), "{text}");
        assert!(
            text.contains("no node has room (ResourceExhausted)"),
            "{text}"
        );
        let j = o[1].to_json();
        assert_eq!(j["id"], Value::Null);
        assert_eq!(j["code"], "ResourceExhausted");
        assert_eq!(o[0].to_json()["state"], "running");
    }
}
