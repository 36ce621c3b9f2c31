//! Request/reply API of a service, registered as a NATS micro service (`$SRV.PING`, `$SRV.INFO`
//! and `$SRV.STATS` answer for it, so `nats micro ls` finds every Ferry service).

use std::future::Future;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

/// Register `ferry-<service>` on this node. Endpoints live under `ferry.api.<node>.<service>`.
pub async fn register(
    client: &async_nats::Client,
    node: &str,
    service: &str,
    description: &str,
) -> anyhow::Result<(service::Service, service::Group)> {
    let svc = client
        .service_builder()
        .description(description)
        .metadata([("node".to_string(), node.to_string())].into())
        .start(format!("ferry-{service}"), crate::VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("register NATS micro service ferry-{service}: {e}"))?;
    let group = svc.group(ferry_wire::subjects::api_group(node, service));
    Ok((svc, group))
}

/// Serve one JSON endpoint until `shutdown`: decode the request, call `handler`, encode the
/// reply; an `Err` becomes a NATS service error whose status text is the message.
pub async fn serve_json<Req, Resp, F, Fut>(
    group: &service::Group,
    name: &str,
    shutdown: CancellationToken,
    handler: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, String>> + Send,
{
    let mut endpoint = group
        .endpoint(name)
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {name}: {e}"))?;
    let name = name.to_string();
    Ok(tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = endpoint.next() => match r { Some(r) => r, None => break },
            };
            let payload = if request.message.payload.is_empty() {
                Bytes::from_static(b"null")
            } else {
                request.message.payload.clone()
            };
            let reply = match ferry_wire::decode::<Req>(&payload) {
                Ok(req) => handler(req).await,
                Err(e) => Err(format!("bad request: {e}")),
            };
            let response = match reply {
                Ok(resp) => Ok(ferry_wire::encode(&resp)),
                Err(message) => Err(service::error::Error {
                    status: message,
                    code: 400,
                }),
            };
            if let Err(e) = request.respond(response).await {
                tracing::warn!(endpoint = %name, error = %e, "reply failed");
            }
        }
    }))
}

/// Call `endpoint` of `service` on `node` and decode the JSON reply. A service error becomes an
/// `Err` with the service's text; a missing service or a silent one gets a message naming it.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    node: &str,
    service: &str,
    endpoint: &str,
    body: &Req,
) -> anyhow::Result<Resp> {
    call_within(
        client,
        node,
        service,
        endpoint,
        body,
        std::time::Duration::from_secs(30),
    )
    .await
}

/// [`call`] with its own time limit (for requests that wait: a drain, a promotion after expiry).
pub async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    node: &str,
    service: &str,
    endpoint: &str,
    body: &Req,
    limit: std::time::Duration,
) -> anyhow::Result<Resp> {
    let subject = ferry_wire::subjects::api(node, service, endpoint);
    // NATS drops a publish this user may not make and says so only on the side: watch for that,
    // or a refused call would look like a silent service.
    let mut denials = crate::nats::denials();
    let quoted = format!("\"{subject}\"");
    let refused = async move {
        loop {
            match denials.recv().await {
                Ok(text) if text.contains(&quoted) => return text,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let request = client.send_request(
        subject.clone(),
        async_nats::Request::new()
            .payload(ferry_wire::encode(body))
            .timeout(Some(limit)),
    );
    let reply = tokio::time::timeout(limit, async {
        tokio::select! {
            reply = request => Ok(reply),
            text = refused => Err(text),
        }
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "ferry-{service} on node {node} did not answer within {} s",
            limit.as_secs()
        )
    })?
    .map_err(|text| {
        anyhow::anyhow!(
            "permission denied: this NATS user may not call {endpoint} of ferry-{service} ({})",
            text.trim_matches('\'')
        )
    })?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            anyhow::anyhow!("ferry-{service} is not running on node {node} (no responders on {subject})")
        }
        async_nats::RequestErrorKind::TimedOut => anyhow::anyhow!(
            "ferry-{service} on node {node} did not answer within {} s",
            limit.as_secs()
        ),
        _ => anyhow::anyhow!("request {subject}: {e}"),
    })?;
    if let Some(error) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
    {
        anyhow::bail!("{}", error.as_str());
    }
    Ok(ferry_wire::decode(&reply.payload)?)
}

/// Ask the scheduler on `node` to run `task` now; returns the run id.
pub async fn request_run(
    client: &async_nats::Client,
    node: &str,
    task: &str,
    by: &str,
) -> anyhow::Result<uuid::Uuid> {
    request_run_with(client, node, task, by, Default::default()).await
}

/// [`request_run`] with parameter values for this run (secure ones sealed by the caller, or by
/// the scheduler before the request is stored).
pub async fn request_run_with(
    client: &async_nats::Client,
    node: &str,
    task: &str,
    by: &str,
    parameters: std::collections::BTreeMap<String, ferry_config::ParamValue>,
) -> anyhow::Result<uuid::Uuid> {
    let request = ferry_wire::RunTaskRequest {
        task: task.to_string(),
        by: by.to_string(),
        parameters,
    };
    let response: ferry_wire::RunTaskResponse = call(
        client,
        node,
        ferry_wire::subjects::service::SCHEDULER,
        ferry_wire::subjects::api::RUN,
        &request,
    )
    .await?;
    Ok(response.run_id)
}

/// Seal every secret of `raw` to `node`'s keymat, as `ferry apply` must before a configuration
/// leaves the operator's machine (`ferry_keymat::seal_config`). Asks the node's scheduler for the
/// keymat's public half only when the configuration has a secret. `Err(Ok(errors))`: a secret
/// could not be sealed (a missing variable or file), errors name host and field;
/// `Err(Err(_))`: the node could not be asked.
pub async fn seal_for_apply(
    client: &async_nats::Client,
    node: &str,
    raw: &mut ferry_config::RawConfig,
) -> Result<(), Result<ferry_config::ConfigErrors, anyhow::Error>> {
    let has_secret = raw.host.iter().any(|h| {
        ferry_config::SECRET_FIELDS
            .iter()
            .any(|f| h.get(*f).is_some_and(|v| v.is_str()))
    }) || !raw.secret_slots_mut().is_empty();
    if !has_secret {
        return Ok(());
    }
    let info: ferry_wire::KeymatInfo = call(
        client,
        node,
        ferry_wire::subjects::service::SCHEDULER,
        ferry_wire::subjects::api::KEYMAT,
        &(),
    )
    .await
    .map_err(Err)?;
    let public = ferry_keymat::PublicKey {
        key_id: info.key_id,
        public_key: info.public_key,
    };
    ferry_keymat::seal_config(raw, &public).map_err(Ok)
}
