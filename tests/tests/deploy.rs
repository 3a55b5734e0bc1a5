//! The deployment files checked against the code they deploy: the compose file (and its
//! Prometheus scraping every node), the Grafana dashboard (every metric it queries is exported
//! by a real node), the Kubernetes manifests (schema-validated, probes, drain timing, env names)
//! and the Dockerfile; and how each set-up keeps secrets: as files (never in arguments or the
//! environment), Redis private and password-protected, no token in nginx's log. No container
//! engine or cluster is needed; see the README for what that leaves unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use wsroute_tests::{Client, Cluster, metrics_text, patience, poll_until, standard_grpc};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Runs a command in the repository root; (success, stdout, stderr). Panics if the program is
/// missing, naming the script that installs it.
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}): run scripts/install-deps.sh"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a Python snippet with `input` on its standard input.
fn python(script: &str, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write to python3");
    child.wait_with_output().expect("python3 finishes")
}

/// Every YAML document in `yaml` (file contents) as JSON, read by PyYAML's safe loader.
fn yaml_docs(yaml: &str) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let out = python(TO_JSON, yaml);
    assert!(
        out.status.success(),
        "YAML does not parse (or PyYAML is missing: run scripts/install-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---- docker-compose ----------------------------------------------------------------------

/// `docker compose` (v2 plugin) when it works, else `docker-compose` (v1).
fn compose() -> Vec<&'static str> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

fn compose_config(extra: &[&str]) -> (bool, String, String) {
    let cmd = compose();
    let mut args: Vec<&str> = cmd[1..].to_vec();
    args.extend(["-f", "docker-compose.yml", "config"]);
    args.extend(extra);
    run(cmd[0], &args)
}

#[test]
fn compose_file_is_accepted() {
    let (ok, _, err) = compose_config(&["-q"]);
    assert!(
        ok,
        "{} config -q refused docker-compose.yml:\n{err}",
        compose()[0]
    );
}

/// The host path that `service` mounts at `target`, from the resolved compose config.
fn mounted(service: &Value, target: &str) -> PathBuf {
    let volumes = service["volumes"].as_array().expect("service has volumes");
    volumes
        .iter()
        .find_map(|v| match v {
            // v1 prints the short syntax, "SOURCE:TARGET[:MODE]".
            Value::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next()?;
                (parts.next()? == target).then(|| PathBuf::from(source))
            }
            // v2 prints the long syntax.
            Value::Object(o) => {
                let source = o.get("source")?.as_str()?;
                (o.get("target")?.as_str()? == target).then(|| PathBuf::from(source))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("nothing mounted at {target}: {volumes:?}"))
}

#[test]
fn compose_prometheus_scrapes_every_node() {
    let (ok, out, err) = compose_config(&[]);
    assert!(ok, "compose config: {err}");
    let config = yaml_docs(&out).remove(0);
    let services = &config["services"];

    // Each node listens for HTTP (hence /metrics) on the port Prometheus is told to scrape.
    let mut nodes = BTreeSet::new();
    for name in ["node1", "node2", "node3"] {
        let listen = services[name]["environment"]["WSROUTE_WS_LISTEN"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} sets WSROUTE_WS_LISTEN"));
        let port = listen.rsplit(':').next().expect("host:port");
        nodes.insert(format!("{name}:{port}"));
    }

    let prometheus = &services["prometheus"];
    assert!(prometheus.is_object(), "compose has a prometheus service");
    let file = mounted(prometheus, "/etc/prometheus/prometheus.yml");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let prom = yaml_docs(&text).remove(0);
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"].as_array().expect("scrape_configs") {
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"].as_array().into_iter().flatten() {
                let t = t.as_str().expect("targets are strings");
                scraped.insert((t.to_owned(), path.to_owned()));
            }
        }
    }
    let want: BTreeSet<_> = nodes
        .iter()
        .map(|n| (n.clone(), "/metrics".to_owned()))
        .collect();
    assert_eq!(scraped, want, "Prometheus scrapes each node's /metrics");

    // The real parser, where installed (Debian's `prometheus` package ships promtool).
    if Command::new("promtool").arg("--version").output().is_ok() {
        let f = file.to_str().expect("utf-8 path");
        let (ok, out, err) = run("promtool", &["check", "config", f]);
        assert!(ok, "promtool check config: {out}{err}");
    } else {
        eprintln!("promtool not installed: prometheus.yml checked for its targets only");
    }

    // Grafana loads the dashboard this repository ships.
    let grafana = &services["grafana"];
    let dashboard = mounted(
        grafana,
        "/var/lib/grafana/dashboards/wsroute-dashboard.json",
    );
    assert_eq!(
        std::fs::canonicalize(dashboard).expect("dashboard file exists"),
        std::fs::canonicalize(repo().join("deploy/grafana/wsroute-dashboard.json"))
            .expect("dashboard file exists")
    );
}

/// The names of the bare secret variables: a set-up that gives a node one of these puts the
/// secret where `ps e`, `docker inspect` or `kubectl describe` show it.
const SECRET_VARS: [&str; 3] = [
    "WSROUTE_JWT_SECRET",
    "WSROUTE_API_KEY",
    "WSROUTE_MESH_SECRET",
];

#[test]
fn compose_gives_secrets_as_files_and_keeps_redis_private() {
    let (ok, out, err) = compose_config(&[]);
    assert!(ok, "compose config: {err}");
    let config = yaml_docs(&out).remove(0);
    let services = &config["services"];

    // Redis: no port on the host, a password from its environment into a config file (not
    // its command line), and a health check that authenticates.
    let redis = &services["redis"];
    assert!(
        redis.get("ports").is_none_or(Value::is_null),
        "Redis publishes no port: {}",
        redis["ports"]
    );
    let password = redis["environment"]["REDIS_PASSWORD"]
        .as_str()
        .expect("redis gets REDIS_PASSWORD");
    assert!(!password.is_empty());
    let command = redis["command"].to_string();
    assert!(command.contains("requirepass"), "{command}");
    assert!(
        !command.contains(password),
        "the password is not on the command line"
    );
    assert!(
        redis["healthcheck"]["test"]
            .to_string()
            .contains("REDISCLI_AUTH"),
        "the health check authenticates: {}",
        redis["healthcheck"]
    );

    let top_secrets = config["secrets"].as_object().expect("top-level secrets");
    for name in ["node1", "node2", "node3"] {
        let node = &services[name];
        let env = &node["environment"];
        // The node reaches Redis with the password.
        let url = env["WSROUTE_REDIS_URL"].as_str().expect("redis url");
        assert_eq!(url, format!("redis://:{password}@redis:6379"), "{name}");
        // No secret in the environment; each one a file from a compose secret.
        for var in SECRET_VARS {
            assert!(
                env.get(var).is_none(),
                "{name} gets {var} in its environment"
            );
            let file = env[format!("{var}_FILE")]
                .as_str()
                .unwrap_or_else(|| panic!("{name} sets {var}_FILE"));
            let secret = file
                .strip_prefix("/run/secrets/")
                .unwrap_or_else(|| panic!("{var}_FILE {file} is a compose secret"));
            let mounted = node["secrets"]
                .as_array()
                .expect("node secrets")
                .iter()
                .any(|s| s["source"] == secret || *s == secret);
            assert!(mounted, "{name} mounts the secret {secret}");
            let source = top_secrets[secret]["file"]
                .as_str()
                .unwrap_or_else(|| panic!("secret {secret} is a file"));
            let text = std::fs::read_to_string(repo().join(source))
                .unwrap_or_else(|e| panic!("secret file {source}: {e}"));
            assert!(!text.trim().is_empty(), "{source} is empty");
        }
        assert!(
            node.get("ports").is_none_or(Value::is_null),
            "{name} publishes nothing (gRPC and HTTP are reached through the lb): {}",
            node["ports"]
        );
    }
}

#[test]
fn nginx_does_not_log_the_token() {
    let conf = read("deploy/nginx.conf");
    let lines: Vec<&str> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect();
    let code = lines.join("\n");
    // nginx's default format (`combined`) logs $request, the query string with it.
    for line in code
        .split(';')
        .filter(|d| d.trim_start().starts_with("access_log"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() >= 3 || words.get(1) == Some(&"off"),
            "an access_log without a format logs the token with the request line: {line}"
        );
        if let Some(format) = words.get(2) {
            let def = code
                .split(';')
                .find(|d| d.trim_start().starts_with(&format!("log_format {format} ")))
                .unwrap_or_else(|| panic!("log_format {format} is defined"));
            for leaks in [
                "$request ",
                "$request\"",
                "$request_uri",
                "$args",
                "$query_string",
                "$arg_token",
                "$request'",
            ] {
                assert!(
                    !def.contains(leaks),
                    "log_format {format} logs {leaks}: {def}"
                );
            }
        }
    }
}

#[test]
fn cluster_script_hands_secrets_to_the_nodes_as_files() {
    let script = read("scripts/cluster.sh");
    // The words of the script's `export` and `unset` lines.
    let words = |command: &str| -> BTreeSet<String> {
        script
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(command))
            .flat_map(|rest| rest.split_whitespace())
            .map(|w| w.split('=').next().unwrap_or_default().to_owned())
            .collect()
    };
    let (exported, unset) = (words("export "), words("unset "));
    for var in SECRET_VARS {
        assert!(
            exported.contains(&format!("{var}_FILE")),
            "cluster.sh exports {var}_FILE"
        );
        assert!(!exported.contains(var), "cluster.sh exports {var}");
        // Inherited from the caller's shell it would reach the nodes beside its file.
        assert!(unset.contains(var), "cluster.sh unsets an inherited {var}");
    }
    for flag in ["--jwt-secret ", "--api-key ", "--mesh-secret "] {
        assert!(
            !script.contains(flag),
            "cluster.sh passes {flag}on a command line"
        );
    }
}

// ---- Grafana dashboard ---------------------------------------------------------------------

/// Longest a node takes from SIGTERM to exit (server/src/drain.rs): 10 waves 200 ms apart
/// (~2 s), the drain grace, up to 10 s for in-flight work, up to 5 s to stop HTTP.
fn worst_case_drain_secs(drain_grace_ms: u64) -> u64 {
    2 + drain_grace_ms.div_ceil(1000) + 10 + 5
}

/// `stop_grace_period` ("45s", "1m30s") in seconds.
fn compose_duration_secs(text: &str) -> u64 {
    let mut secs = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
            number.clear();
            secs += n * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => panic!("duration unit in {text}"),
            };
        }
    }
    assert!(number.is_empty(), "duration {text} ends with a unit");
    secs
}

#[test]
fn compose_gives_nodes_time_to_drain() {
    let (ok, out, err) = compose_config(&[]);
    assert!(ok, "compose config: {err}");
    let config = yaml_docs(&out).remove(0);
    for name in ["node1", "node2", "node3"] {
        let node = &config["services"][name];
        let drain_grace_ms = node["environment"]["WSROUTE_DRAIN_GRACE_MS"]
            .as_str()
            .map_or(20_000, |v| v.parse().expect("milliseconds"));
        let stop = node["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a stop_grace_period (docker's default is 10 s)"));
        let worst_case = worst_case_drain_secs(drain_grace_ms);
        assert!(
            compose_duration_secs(stop) > worst_case,
            "{name}: stop_grace_period {stop} must exceed the worst-case drain ({worst_case} s)"
        );
    }
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/wsroute-dashboard.json"))
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let e = target["expr"].as_str().expect("every target has an expr");
            exprs.push(e.to_owned());
        }
    }
    exprs
}

/// `wsroute_*` metric names used in `expr`, histogram series reduced to their metric.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wsroute_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name);
        let tail = &rest[at..];
        let len = tail.find(|c| !is_name(c)).unwrap_or(tail.len());
        if !preceded {
            let name = &tail[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        rest = &tail[len..];
    }
    names
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promql-parser (PyPI) is a port of Prometheus' own parser; Grafana's interval variable is
    // replaced by a duration first, as Grafana does before sending the query.
    const PARSE: &str = "import json, sys, promql_parser\n\
        bad = []\n\
        for e in json.load(sys.stdin):\n\
        \x20   try: promql_parser.parse(e.replace('$__rate_interval', '1m'))\n\
        \x20   except ValueError as err: bad.append(f'{e}: {err}')\n\
        print('\\n'.join(bad)); sys.exit(1 if bad else 0)";
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "the dashboard has its panels");
    let out = python(PARSE, &json!(exprs).to_string());
    assert!(
        out.status.success(),
        "dashboard queries that do not parse (promql-parser missing? run scripts/install-deps.sh):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(wsroute_a_seconds_bucket[1m]))) \
         / sum(rate(wsroute_b_total[1m])) * on (instance) group_left (node) wsroute_node_info \
         + not_wsroute_c",
    );
    let want: BTreeSet<String> = ["wsroute_a_seconds", "wsroute_b_total", "wsroute_node_info"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

/// Metric families a node exports (`# TYPE name kind` lines).
async fn exported(metrics_url: &str) -> BTreeSet<String> {
    metrics_text(metrics_url)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_on_the_dashboard_is_exported() {
    let used: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(
        used.len() >= 15,
        "the dashboard queries the metrics: {used:?}"
    );

    // Labelled metrics appear only once a label value has been seen, so drive every path the
    // dashboard shows: a remote delivery (mesh, delivery latency), a store and its replay
    // (inbox), a rejection and a refused frame.
    let c = Cluster::start(2).await;
    let mut alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut bob = Client::connect(&c.node(2).ws_user("bob")).await;
    let ack = alice.send_and_ack("bob", json!("hi")).await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    bob.expect_type("message").await;
    let ack = alice.send_and_ack("carol", json!("later")).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    let mut carol = Client::connect(&c.node(1).ws_user("carol")).await;
    carol.expect_type("message").await;
    let ack = alice.send_and_ack("not a user", json!(1)).await;
    assert_eq!(ack["status"], "rejected", "{ack}");
    alice.send_text("not json").await;
    alice.expect_type("error").await;

    // Node 1 handled the sends; node 2 received over the mesh. Together they export everything.
    let missing = || async {
        let mut have = exported(&c.node(1).http("/metrics")).await;
        have.extend(exported(&c.node(2).http("/metrics")).await);
        used.difference(&have).cloned().collect::<Vec<_>>()
    };
    poll_until(patience(), || async { missing().await.is_empty() }).await;
    let missing = missing().await;
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no node exports: {missing:?}"
    );
}

// ---- Kubernetes ----------------------------------------------------------------------------

const K8S_DIR: &str = "deploy/k8s";

/// Every manifest file under deploy/k8s.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(K8S_DIR))
        .expect("deploy/k8s exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "manifests in {K8S_DIR}");
    files
}

/// Every object in every manifest.
fn manifests() -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|f| yaml_docs(&std::fs::read_to_string(f).expect("read manifest")))
        .collect()
}

fn object<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {K8S_DIR}"))
}

/// Whether `selector` (a `matchLabels` map or a Service selector) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector is a map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn k8s_manifests_validate_against_the_kubernetes_schemas() {
    // kubernetes-validate (PyPI) ships the JSON schemas of each Kubernetes release; --strict
    // also refuses fields the schema does not know (a misspelt probe is an error, not ignored).
    let files = manifest_files();
    let mut args = vec!["-m", "kubernetes_validate", "--strict"];
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let (ok, out, err) = run("python3", &args);
    assert!(ok, "kubernetes-validate:\n{out}{err}");
}

/// Environment variable names `wsroute-server` reads: the `"WSROUTE_*"` literals in its source
/// (config.rs for flags, main.rs for logging).
fn env_names_the_server_reads() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read server/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("WSROUTE_")
                        && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    {
                        names.insert(piece.to_owned());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(&repo().join("server/src"), &mut names);
    assert!(names.contains("WSROUTE_REDIS_URL"), "found the flags");
    names
}

/// The number of the container's port called `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("a container port named {name}"))
}

/// The node container of the StatefulSet, and its pod spec.
fn node_container(all: &[Value]) -> (&Value, &Value) {
    let spec = &object(all, "StatefulSet", "wsroute")["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    (&containers[0], spec)
}

/// The variables a container gets from its `envFrom` ConfigMaps and Secrets.
fn env_from(all: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().expect("envFrom") {
        let (kind, name, field) = if let Some(r) = from.get("configMapRef") {
            ("ConfigMap", &r["name"], "data")
        } else {
            ("Secret", &from["secretRef"]["name"], "stringData")
        };
        let obj = object(all, kind, name.as_str().expect("ref name"));
        for (k, v) in obj[field].as_object().expect("data") {
            let v = v.as_str().unwrap_or_else(|| panic!("{k} is a string"));
            env.insert(k.clone(), v.to_owned());
        }
    }
    env
}

/// For each `WSROUTE_*_FILE` variable of the container, the bare variable's name and the
/// Secret value the file holds: the path must lie in a read-only mount of a volume made from
/// the Secret `wsroute`, and name one of its keys.
fn secret_files(all: &[Value], container: &Value, spec: &Value) -> BTreeMap<String, String> {
    let secret = object(all, "Secret", "wsroute");
    let mut out = BTreeMap::new();
    for e in container["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name");
        let Some(var) = name.strip_suffix("_FILE") else {
            continue;
        };
        if !var.starts_with("WSROUTE_") {
            continue;
        }
        let path = e["value"].as_str().expect("a _FILE variable has a value");
        let mount = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| path.starts_with(&format!("{p}/")))
            })
            .unwrap_or_else(|| panic!("{path} lies in a mounted volume"));
        assert_eq!(mount["readOnly"], true, "{path} is mounted read-only");
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        assert_eq!(
            volume["secret"]["secretName"], "wsroute",
            "{path} from the Secret"
        );
        let key = path.rsplit('/').next().expect("a file name");
        let value = secret["stringData"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in the Secret wsroute"));
        out.insert(var.to_owned(), value.to_owned());
    }
    out
}

/// Seconds the container's preStop hook sleeps (`exec: sleep N` or the `sleep` action).
fn pre_stop_sleep(container: &Value) -> u64 {
    let pre_stop = &container["lifecycle"]["preStop"];
    pre_stop["exec"]["command"]
        .as_array()
        .filter(|c| c.first().is_some_and(|c| c == "sleep"))
        .and_then(|c| c.get(1)?.as_str()?.parse().ok())
        .or_else(|| pre_stop["sleep"]["seconds"].as_u64())
        .expect("preStop sleeps (exec sleep N, or the sleep action)")
}

#[test]
fn k8s_statefulset_probes_drain_and_config_fit_the_server() {
    let all = manifests();
    let sts = object(&all, "StatefulSet", "wsroute");
    let pod = &sts["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let (node, spec) = node_container(&all);

    // Readiness: the kubelet's gRPC probe on the gRPC port, asking the health service for a
    // name it answers (docs/protocol.md, gRPC); liveness: `/healthz` on the HTTP port, which
    // stays 200 while the node drains.
    let http_port = container_port(node, "http");
    let readiness = &node["readinessProbe"];
    assert_eq!(
        readiness["grpc"]["port"],
        container_port(node, "grpc"),
        "readiness asks gRPC health on the gRPC port (a number: the kubelet takes no name)"
    );
    assert!(readiness.get("httpGet").is_none(), "one handler per probe");
    let service = readiness["grpc"]["service"].as_str().unwrap_or_default();
    assert!(
        wsroute_server::api::health::SERVICES.contains(&service),
        "the health service answers for {service:?}"
    );
    assert_eq!(node["livenessProbe"]["httpGet"]["path"], "/healthz");
    let port = &node["livenessProbe"]["httpGet"]["port"];
    assert!(
        port == "http" || *port == http_port,
        "livenessProbe port {port}"
    );

    // Config by environment: every WSROUTE_* name set (directly, or from the ConfigMap and the
    // Secret) is one the server reads; other names only feed $(NAME) references.
    let reads = env_names_the_server_reads();
    let mut set: BTreeSet<String> = BTreeSet::new();
    let mut values: BTreeSet<String> = BTreeSet::new();
    for e in node["env"].as_array().expect("env") {
        set.insert(e["name"].as_str().expect("env name").to_owned());
        if let Some(v) = e["value"].as_str() {
            values.insert(v.to_owned());
        }
    }
    let config = env_from(&all, node);
    set.extend(config.keys().cloned());
    for name in &set {
        if name.starts_with("WSROUTE_") {
            assert!(reads.contains(name), "{name} is not read by wsroute-server");
        } else {
            let reference = format!("$({name})");
            assert!(
                values.iter().any(|v| v.contains(&reference)),
                "{name} is set but neither read by the server nor referenced"
            );
        }
    }
    for needed in [
        "WSROUTE_NODE_ID",
        "WSROUTE_ADVERTISE_GRPC",
        "WSROUTE_PUBLIC_URL",
        "WSROUTE_REDIS_URL",
        "WSROUTE_JWT_SECRET_FILE",
        "WSROUTE_API_KEY_FILE",
        "WSROUTE_MESH_SECRET_FILE",
        "WSROUTE_DRAIN_GRACE_MS",
    ] {
        assert!(set.contains(needed), "{needed} is not set");
    }
    // The secrets are files from the mounted Secret, never variables (from the ConfigMap, the
    // Secret or the pod spec).
    let files = secret_files(&all, node, spec);
    for var in SECRET_VARS {
        assert!(!set.contains(var), "{var} is set as a variable");
        assert!(
            files.contains_key(var),
            "{var}_FILE names a key of the mounted Secret"
        );
    }
    assert!(
        !config.contains_key("WSROUTE_DEV_AUTH"),
        "no dev auth in the cluster manifests"
    );
    // The node id is the pod name (stable under a StatefulSet).
    let env = |name: &str| -> Value {
        node["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in env"))
    };
    assert_eq!(
        env("WSROUTE_NODE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    // Drain: a preStop, and a grace period above preStop + the node's worst-case drain
    // (drain.rs: waves ~2 s, the drain grace, up to 10 s for in-flight work, 5 s HTTP stop).
    let sleep_secs = pre_stop_sleep(node);
    assert!(
        (2..=15).contains(&sleep_secs),
        "preStop gives endpoints time to update: {sleep_secs}s"
    );
    let drain_grace_ms: u64 = config["WSROUTE_DRAIN_GRACE_MS"]
        .parse()
        .expect("milliseconds");
    let worst_case = sleep_secs + worst_case_drain_secs(drain_grace_ms);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > worst_case,
        "terminationGracePeriodSeconds {grace} must exceed preStop + drain ({worst_case} s)"
    );

    // Runs as the image's non-root user, with resource requests.
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(node["securityContext"]["allowPrivilegeEscalation"], false);
    let uid = spec["securityContext"]["runAsUser"].as_u64().expect("uid");
    assert!(
        read("Dockerfile").contains(&format!("--uid {uid} ")),
        "runAsUser {uid} is the image's user"
    );
    assert!(node["resources"]["requests"]["cpu"].is_string());
    assert!(node["resources"]["requests"]["memory"].is_string());

    // The headless Service gives pods their mesh names and exposes gRPC; the advertised
    // address is the pod's name under it, on the port the node listens on.
    let mesh_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let mesh = object(&all, "Service", mesh_name);
    assert_eq!(mesh["spec"]["clusterIP"], "None", "headless");
    assert_eq!(mesh["spec"]["publishNotReadyAddresses"], true);
    assert!(selects(&mesh["spec"]["selector"], labels));
    let grpc_port = container_port(node, "grpc");
    assert!(
        mesh["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == grpc_port && p["targetPort"] == "grpc"),
        "the mesh Service exposes gRPC"
    );
    let listen = &config["WSROUTE_GRPC_LISTEN"];
    assert!(listen.ends_with(&format!(":{grpc_port}")), "{listen}");
    assert_eq!(
        env("WSROUTE_ADVERTISE_GRPC")["value"],
        format!("$(POD_NAME).{mesh_name}.$(POD_NAMESPACE).svc.cluster.local:{grpc_port}")
    );

    // The client-facing Service reaches the same pods on HTTP (/ws, /gateway).
    let client = object(&all, "Service", "wsroute");
    assert_ne!(client["spec"]["clusterIP"], "None");
    assert!(selects(&client["spec"]["selector"], labels));
    assert!(
        client["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["targetPort"] == "http")
    );

    // One pod at a time may be disrupted, and the budget covers exactly these pods.
    let pdb = object(&all, "PodDisruptionBudget", "wsroute");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    for other in all.iter().filter(|o| o["kind"] == "Deployment") {
        let their = &other["spec"]["template"]["metadata"]["labels"];
        assert!(
            !selects(&pdb["spec"]["selector"]["matchLabels"], their),
            "the PDB selects only wsroute nodes"
        );
    }
}

/// A `wsroute-server` process started by hand (the harness starts nodes from flags; this one
/// is configured the way the pod is, by environment), killed if the test ends first.
struct EnvNode(Option<std::process::Child>);

impl Drop for EnvNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn a_pod_configured_by_the_manifests_drains_within_its_grace_period() {
    let all = manifests();
    let (container, spec) = node_container(&all);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let budget = std::time::Duration::from_secs(grace - pre_stop_sleep(container));

    // The pod's environment, with only what Kubernetes would fill in (identity, addresses)
    // and the Redis to use replaced by local values.
    let redis = wsroute_tests::RedisServer::start().await;
    let (ws_port, grpc_port) = (wsroute_tests::free_port(), wsroute_tests::free_port());
    let mut env = env_from(&all, container);
    env.insert("WSROUTE_NODE_ID".into(), "wsroute-0".into());
    env.insert("WSROUTE_WS_LISTEN".into(), format!("127.0.0.1:{ws_port}"));
    env.insert(
        "WSROUTE_GRPC_LISTEN".into(),
        format!("127.0.0.1:{grpc_port}"),
    );
    env.insert(
        "WSROUTE_ADVERTISE_GRPC".into(),
        format!("127.0.0.1:{grpc_port}"),
    );
    env.insert("WSROUTE_REDIS_URL".into(), redis.url());
    // The Secret, mounted as the kubelet would: one file per key, the paths moved to a
    // temporary directory.
    let secrets = secret_files(&all, container, spec);
    let dir = std::env::temp_dir().join(format!("wsroute-deploy-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("secrets dir");
    for (var, value) in &secrets {
        let path = dir.join(var);
        std::fs::write(&path, value).expect("write secret");
        env.insert(format!("{var}_FILE"), path.display().to_string());
    }
    let log = std::env::temp_dir().join(format!("wsroute-deploy-{}.log", std::process::id()));
    let mut cmd = Command::new(wsroute_tests::binary("wsroute-server"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSROUTE_")) {
        cmd.env_remove(k);
    }
    cmd.envs(&env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut node = EnvNode(Some(cmd.spawn().expect("wsroute-server starts")));
    let pid = node
        .0
        .as_ref()
        .map(std::process::Child::id)
        .expect("running");
    // Ready as the kubelet's readiness probe sees it: gRPC health SERVING for the probe's
    // service, on the gRPC port, without credentials.
    let probed = container["readinessProbe"]["grpc"]["service"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let grpc_url = format!("http://127.0.0.1:{grpc_port}");
    let serving = || {
        let (url, service) = (grpc_url.clone(), probed.clone());
        async move {
            let Ok(channel) = tonic::transport::Channel::from_shared(url)
                .expect("URL")
                .connect()
                .await
            else {
                return false;
            };
            standard_grpc::check(channel, &service)
                .await
                .is_ok_and(|s| s == ServingStatus::Serving)
        }
    };
    assert!(
        poll_until(patience(), &serving).await,
        "the node did not get ready with the manifests' environment (log: {})",
        log.display()
    );
    let readyz = format!("http://127.0.0.1:{ws_port}/readyz");
    let r = reqwest::get(&readyz).await.expect("readyz");
    assert_eq!(r.status(), 200, "/readyz agrees");

    // A client authenticated with a token signed with the Secret's JWT key.
    // `ps` shows no secret: neither the arguments nor the environment carry one.
    for what in ["cmdline", "environ"] {
        let seen = std::fs::read(format!("/proc/{pid}/{what}")).expect("read /proc");
        let seen = String::from_utf8_lossy(&seen);
        for (var, value) in &secrets {
            assert!(!seen.contains(value.as_str()), "{var} in the pod's {what}");
        }
    }

    let token = wsroute_tests::token(&secrets["WSROUTE_JWT_SECRET"], "alice", 300);
    let mut alice = Client::connect(&format!("ws://127.0.0.1:{ws_port}/ws?token={token}")).await;

    // What the kubelet does after the preStop hook.
    let started = std::time::Instant::now();
    let (ok, _, err) = run("kill", &["-TERM", &pid.to_string()]);
    assert!(ok, "kill -TERM: {err}");
    // Not ready from the kubelet's view: gRPC health stops saying SERVING while the drain
    // runs. With one client and no other node the drain can finish before the first probe, and
    // then the port is closed, which a readiness probe also counts as not ready. (That health
    // says NOT_SERVING during a drain is shown in grpc_conventions.rs, and /readyz's 503 in
    // operations.rs, where the drain is held open by clients.)
    let not_ready = || {
        let serving = serving();
        async move { !serving.await }
    };
    assert!(
        poll_until(patience(), not_ready).await,
        "gRPC health stops saying SERVING while draining, so the pod leaves the Service"
    );
    // The only node: its client is told to go (1001) and finds its way back via /gateway.
    let (_, close) = alice.expect_close().await;
    assert_eq!(close.map(|c| c.code), Some(1001), "going away");
    let mut child = node.0.take().expect("running");
    let waited = tokio::time::timeout(
        budget,
        tokio::task::spawn_blocking(move || {
            let status = child.wait();
            (child, status)
        }),
    )
    .await;
    let took = started.elapsed();
    let Ok(Ok((_, Ok(status)))) = waited else {
        let _ = run("kill", &["-KILL", &pid.to_string()]);
        panic!(
            "the node did not exit within terminationGracePeriodSeconds minus preStop ({budget:?}); \
             the kubelet would SIGKILL it (log: {})",
            log.display()
        );
    };
    println!("drain took {took:?} (budget {budget:?})");
    assert!(status.success(), "drain exits 0: {status}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn k8s_dev_redis_is_marked_not_for_production() {
    let text = read("deploy/k8s/redis-dev.yaml");
    assert!(text.contains("NOT FOR PRODUCTION"));
    let all = manifests();
    let config = object(&all, "ConfigMap", "wsroute");
    let url = config["data"]["WSROUTE_REDIS_URL"].as_str().expect("url");
    let redis = object(&all, "Service", "wsroute-redis");
    assert_eq!(url, "redis://wsroute-redis:6379");
    assert_eq!(redis["spec"]["ports"][0]["port"], 6379);
}

// ---- Dockerfile ----------------------------------------------------------------------------

#[test]
fn dockerfile_is_multi_stage_and_builds_what_compose_runs() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let builder = froms[0]
        .split_whitespace()
        .last()
        .expect("the first stage is named");
    assert!(
        froms[0].contains(" AS "),
        "the build stage is named: {}",
        froms[0]
    );
    // The runtime stage takes only the binaries from the builder.
    let runtime_start = lines
        .iter()
        .position(|l| *l == *froms.last().expect("a last stage"))
        .expect("found");
    let runtime = &lines[runtime_start..];
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with(&format!("COPY --from={builder} "))),
        "the runtime stage copies from {builder}"
    );
    assert!(
        !runtime.iter().any(|l| l.contains("cargo ")),
        "no cargo at runtime"
    );
    // It builds the server's package, and runs it as a non-root user.
    let server_pkg = read("server/Cargo.toml");
    assert!(server_pkg.contains("name = \"wsroute-server\""));
    assert!(text.contains("-p wsroute-server"), "builds wsroute-server");
    assert!(text.contains("--locked"), "builds what Cargo.lock pins");
    assert!(
        runtime.contains(&"ENTRYPOINT [\"wsroute-server\"]"),
        "the image runs wsroute-server"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    // The runtime base has a shell toolset: curl for the compose health checks (installed),
    // `sleep` for the Kubernetes preStop (coreutils).
    assert!(
        froms.last().is_some_and(|f| f.contains("debian")),
        "{froms:?}"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.contains("install") && l.contains("curl"))
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("EXPOSE") && l.contains("8080") && l.contains("50051"))
    );

    // Compose builds its nodes from this Dockerfile and runs them on the exposed ports.
    let (ok, out, err) = compose_config(&[]);
    assert!(ok, "compose config: {err}");
    let config = yaml_docs(&out).remove(0);
    for name in ["node1", "node2", "node3"] {
        let svc = &config["services"][name];
        let dockerfile = svc["build"]["dockerfile"].as_str().expect("built here");
        assert_eq!(dockerfile, "Dockerfile", "{name}");
        assert!(svc["environment"]["WSROUTE_WS_LISTEN"] == "0.0.0.0:8080");
        assert!(svc["environment"]["WSROUTE_GRPC_LISTEN"] == "0.0.0.0:50051");
    }
}
