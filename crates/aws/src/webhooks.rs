//! The `WebhookStore` on DynamoDB: endpoints, deliveries and attempts as items of the
//! jobs table, under key prefixes of their own (`docs/table-design.md` lists them).
//!
//! | item | `pk` | `sk` | attributes | index keys |
//! |---|---|---|---|---|
//! | endpoint | `WHT#{len}:{tenant}` | `WH#{id}` | `body` | — |
//! | endpoint count | `WHT#{len}:{tenant}` | `COUNT` | `n` | — |
//! | delivery | `WHD#{id}` | `WHD` | `body`, `token` (while claimed) | `gsi1pk = WHE#{endpoint}`, `gsi1sk = D#{id}`; pending: `gsi2pk = WHDUE`, `gsi2sk = {due ms:013}#{id}`; finished: `gsi2pk = WHDONE`, `gsi2sk = {ended ms:013}#{id}` |
//! | attempt | `WHD#{id}` | `A#{n:04}` | `body` | `gsi1pk = WHE#{endpoint}`, `gsi1sk = A#{at ms:013}#{id}#{n:04}` |
//!
//! | port method | DynamoDB |
//! |---|---|
//! | `create_endpoint` | `TransactWriteItems`: `ADD n :1` on `COUNT` if `attribute_not_exists(n) OR n < :max`, `Put` the endpoint |
//! | `list_endpoints` / `get_endpoint` | `Query pk = WHT#…, begins_with(sk, WH#)` / `GetItem` (consistent) |
//! | `delete_endpoint` | `TransactWriteItems`: `Delete` the endpoint if it exists, `ADD n :-1`; then its deliveries and attempts, from `gsi1 WHE#{id}`, by `BatchWriteItem` |
//! | `fan_out` | `PutItem` of each delivery if `attribute_not_exists(pk)` (ids are derived from the event, so a repeat writes nothing new) |
//! | `claim` (not a port method: the Lambda claims the delivery a message names) | `GetItem`, then the same conditional `UpdateItem` as `claim_due` |
//! | `claim_due` | `Query gsi2 WHDUE, gsi2sk <= now`, then per delivery `UpdateItem SET token, gsi2sk = lease end IF gsi2sk = :as_read` (a stale index entry, or another claimer, fails the condition: skipped) |
//! | `record_attempt` | `GetItem` the delivery, then `TransactWriteItems`: `Update` it `IF token = :token` (moving it to its next due time, or to `WHDONE`), `Put` the attempt |
//! | `list_attempts` | `Query gsi1 WHE#{endpoint}, begins_with(gsi1sk, A#)`, newest first |
//! | `delete_finished_deliveries` | `Query gsi2 WHDONE, gsi2sk < before`, then each delivery's collection deleted |
//! | `pending_events` | nothing: on AWS the outbox is the table's **stream** (see `docs/functions.md`, "Webhooks on AWS"): a consumer turns each record into an event with [`outbox_event`] and calls `Deliverer::fan_out`; the `webhooks` Lambda (functions/common) is that consumer |
//!
//! The index reads are eventually consistent; every decision they lead to is a
//! conditional write on the base table, so a lagging index costs a skipped item, never
//! a double send.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, DeleteRequest, Put, ReturnValue, TransactWriteItem, Update,
    WriteRequest,
};
use chrono::{DateTime, Utc};
use jobs::ports::{StoreError, StoreResult};
use jobs::webhooks::ports::{AttemptRecord, CreateEndpoint, WebhookStore};
use jobs::webhooks::{Attempt, Claimed, Delivery, DeliveryState, Endpoint, OutboxEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dynamodb::{GSI1, GSI2, condition_failed};

type Item = HashMap<String, AttributeValue>;

/// Index pages one sweep or deletion reads at most.
const PAGES: usize = 20;

/// Webhook items on the jobs table.
#[derive(Clone)]
pub struct DynamoWebhookStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn tenant_pk(tenant: &str) -> String {
    format!("WHT#{}:{tenant}", tenant.len())
}

fn delivery_pk(id: &str) -> String {
    format!("WHD#{id}")
}

fn endpoint_index(endpoint_id: &str) -> String {
    format!("WHE#{endpoint_id}")
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis().max(0)
}

fn at_key(t_ms: i64, id: &str) -> String {
    format!("{t_ms:013}#{id}")
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Unavailable(format!("encode: {e}")))
}

fn body_of<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    let raw = item
        .get("body")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Unavailable("an item without a body".into()))?;
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("decode: {e}")))
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// The outbox event a stream record of the jobs table carries, if any: a job's `META`
/// item whose `status` changed into `running` or a terminal status. `sequence` is the
/// record's sequence number (unique per table stream), which becomes the event id, so
/// a batch the stream delivers again fans out to the same delivery ids.
pub fn outbox_event(sequence: &str, old: Option<&Item>, new: &Item) -> Option<OutboxEvent> {
    if text(new, "sk") != Some("META") {
        return None;
    }
    let job_id = jobs::model::JobId::parse(text(new, "pk")?.strip_prefix("JOB#")?)?;
    let status = jobs::model::JobStatus::parse(text(new, "status")?)?;
    let before = old.and_then(|o| text(o, "status"));
    if before == Some(status.as_str()) || jobs::webhooks::EventType::of_status(status).is_none() {
        return None;
    }
    Some(OutboxEvent {
        id: sequence.to_string(),
        tenant: text(new, "tenant")?.to_string(),
        job_id,
        status,
    })
}

/// What [`DynamoWebhookStore::claim`] found for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOne {
    /// Claimed now: only `token` may record its attempt.
    Claimed(Claimed),
    /// Pending, not due before `due`, and nobody holds it; `attempts` made so far.
    NotDue { due: DateTime<Utc>, attempts: u32 },
    /// Another claim holds it (its lease has not lapsed): its holder sends it.
    Held,
    /// Delivered, given up, or gone: nothing to send.
    Finished,
}

impl DynamoWebhookStore {
    /// Times come from the callers (the deliverer's clock), so the store needs none.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoWebhookStore {
            client,
            table: table.into(),
        }
    }

    /// Claims one delivery by id if it is due at `now` (what the `webhooks` Lambda does
    /// for each message of its queue): `GetItem`, then the same conditional
    /// `UpdateItem` as [`WebhookStore::claim_due`], so two claimers of one delivery
    /// never both hold it.
    pub async fn claim(
        &self,
        id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> StoreResult<ClaimOne> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery_pk(id), "WHD")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem delivery", &e))?;
        let Some(item) = out.item() else {
            return Ok(ClaimOne::Finished);
        };
        let (Some("WHDUE"), Some(sort)) = (text(item, "gsi2pk"), text(item, "gsi2sk")) else {
            return Ok(ClaimOne::Finished);
        };
        let due_ms: i64 = sort.get(..13).and_then(|d| d.parse().ok()).unwrap_or(0);
        if due_ms > ms(now) {
            return Ok(if item.contains_key("token") {
                ClaimOne::Held
            } else {
                ClaimOne::NotDue {
                    due: DateTime::from_timestamp_millis(due_ms).unwrap_or(now),
                    attempts: body_of::<Delivery>(item)?.attempts,
                }
            });
        }
        let token = ulid::Ulid::new().to_string();
        let until = ms(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery_pk(id), "WHD")))
            .update_expression("SET #token = :token, gsi2sk = :until")
            .condition_expression("gsi2sk = :read AND gsi2pk = :due")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", s(at_key(until, id)))
            .expression_attribute_values(":read", s(sort))
            .expression_attribute_values(":due", s("WHDUE"))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(out) => match out.attributes() {
                Some(item) => Ok(ClaimOne::Claimed(Claimed {
                    delivery: body_of(item)?,
                    token,
                })),
                None => Ok(ClaimOne::Finished),
            },
            Err(e) if condition_failed(&e) => Ok(ClaimOne::Held),
            Err(e) => Err(self.unavailable("UpdateItem claim delivery", &e)),
        }
    }

    fn unavailable(&self, op: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::Unavailable(crate::error::describe(op, &self.table, err))
    }

    /// A transaction; `Ok(false)` when a condition refused it.
    async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> StoreResult<bool> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancel))
                    if cancel
                        .cancellation_reasons()
                        .iter()
                        .any(|r| r.code() == Some("ConditionalCheckFailed")) =>
                {
                    Ok(false)
                }
                _ => Err(self.unavailable(op, &e)),
            },
        }
    }

    /// Every `(pk, sk)` of an index query, paged, at most `PAGES` pages.
    async fn index_keys(
        &self,
        op: &str,
        index: &str,
        condition: &str,
        values: Item,
        limit: Option<usize>,
    ) -> StoreResult<Vec<Item>> {
        let (pk_name, sk_name) = if index == GSI1 {
            ("gsi1pk", "gsi1sk")
        } else {
            ("gsi2pk", "gsi2sk")
        };
        let mut found = Vec::new();
        let mut start = None;
        for _ in 0..PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .set_expression_attribute_names(Some(
                    [("#pk".to_string(), pk_name.to_string())]
                        .into_iter()
                        .chain(
                            condition
                                .contains("#sk")
                                .then(|| ("#sk".to_string(), sk_name.to_string())),
                        )
                        .collect(),
                ))
                .set_expression_attribute_values(Some(values.clone()))
                .set_limit(limit.map(|l| l.min(1000) as i32))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable(op, &e))?;
            found.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() || limit.is_some_and(|l| found.len() >= l) {
                break;
            }
        }
        if let Some(l) = limit {
            found.truncate(l);
        }
        Ok(found)
    }

    async fn delete_items(&self, op: &str, items: &[Item]) -> StoreResult<()> {
        for chunk in items.chunks(25) {
            let requests: Vec<WriteRequest> = chunk
                .iter()
                .filter_map(|item| {
                    let pk = item.get("pk")?.clone();
                    let sk = item.get("sk")?.clone();
                    let delete = DeleteRequest::builder()
                        .key("pk", pk)
                        .key("sk", sk)
                        .build()
                        .ok()?;
                    Some(WriteRequest::builder().delete_request(delete).build())
                })
                .collect();
            let mut pending = HashMap::from([(self.table.clone(), requests)]);
            for attempt in 0..5u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| self.unavailable(op, &e))?;
                pending = out.unprocessed_items().cloned().unwrap_or_default();
                if pending.values().all(Vec::is_empty) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(())
    }

    /// A delivery's item and its attempts.
    async fn delete_delivery(&self, id: &str) -> StoreResult<()> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(delivery_pk(id)))
            .projection_expression("pk, sk")
            .send()
            .await
            .map_err(|e| self.unavailable("Query delivery", &e))?;
        self.delete_items("BatchWriteItem delivery", items.items())
            .await
    }
}

#[async_trait]
impl WebhookStore for DynamoWebhookStore {
    async fn create_endpoint(
        &self,
        endpoint: &Endpoint,
        max: usize,
    ) -> StoreResult<CreateEndpoint> {
        let pk = tenant_pk(&endpoint.tenant);
        let count = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), "COUNT")))
            .update_expression("ADD n :one")
            .condition_expression("attribute_not_exists(n) OR n < :max")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut item = key(pk, &format!("WH#{}", endpoint.id));
        item.insert("body".into(), s(to_json(endpoint)?));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let done = self
            .transact(
                "TransactWriteItems create webhook",
                vec![
                    TransactWriteItem::builder().update(count).build(),
                    TransactWriteItem::builder().put(put).build(),
                ],
            )
            .await?;
        Ok(if done {
            CreateEndpoint::Created
        } else {
            CreateEndpoint::TooMany
        })
    }

    async fn list_endpoints(&self, tenant: &str, limit: usize) -> StoreResult<Vec<Endpoint>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :wh)")
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":wh", s("WH#"))
            .consistent_read(true)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| self.unavailable("Query webhooks", &e))?;
        out.items().iter().map(body_of).collect()
    }

    async fn get_endpoint(&self, tenant: &str, id: &str) -> StoreResult<Option<Endpoint>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), &format!("WH#{id}"))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem webhook", &e))?;
        out.item().map(body_of).transpose()
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let pk = tenant_pk(tenant);
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(pk.clone(), &format!("WH#{id}"))))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let count = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pk, "COUNT")))
            .update_expression("ADD n :minus")
            .expression_attribute_values(":minus", n(-1))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let existed = self
            .transact(
                "TransactWriteItems delete webhook",
                vec![
                    TransactWriteItem::builder().delete(delete).build(),
                    TransactWriteItem::builder().update(count).build(),
                ],
            )
            .await?;
        if existed {
            let items = self
                .index_keys(
                    "Query webhook deliveries",
                    GSI1,
                    "#pk = :pk",
                    HashMap::from([(":pk".to_string(), s(endpoint_index(id)))]),
                    None,
                )
                .await?;
            self.delete_items("BatchWriteItem webhook deliveries", &items)
                .await?;
        }
        Ok(existed)
    }

    async fn pending_events(&self, _limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        // The outbox on AWS is the table's stream (module docs); nothing is kept here.
        Ok(Vec::new())
    }

    async fn fan_out(&self, _event: &OutboxEvent, deliveries: &[Delivery]) -> StoreResult<()> {
        for d in deliveries {
            let due = d.next_attempt_at.map(ms).unwrap_or(0);
            let mut item = key(delivery_pk(&d.id), "WHD");
            item.insert("body".into(), s(to_json(d)?));
            item.insert("gsi1pk".into(), s(endpoint_index(&d.endpoint_id)));
            item.insert("gsi1sk".into(), s(format!("D#{}", d.id)));
            item.insert("gsi2pk".into(), s("WHDUE"));
            item.insert("gsi2sk".into(), s(at_key(due, &d.id)));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            // An existing delivery is this one, fanned out before: nothing to add.
            if let Err(e) = put
                && !condition_failed(&e)
            {
                return Err(self.unavailable("PutItem delivery", &e));
            }
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        let due = self
            .index_keys(
                "Query due deliveries",
                GSI2,
                "#pk = :pk AND #sk <= :now",
                HashMap::from([
                    (":pk".to_string(), s("WHDUE")),
                    (":now".to_string(), s(format!("{:013}#~", ms(now)))),
                ]),
                Some(limit),
            )
            .await?;
        let token = ulid::Ulid::new().to_string();
        let until = ms(now) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        let mut claimed = Vec::new();
        for item in due {
            let (Some(pk), Some(sk)) = (text(&item, "pk"), text(&item, "gsi2sk")) else {
                continue;
            };
            let id = pk.trim_start_matches("WHD#");
            let out = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(pk.to_string(), "WHD")))
                .update_expression("SET #token = :token, gsi2sk = :until")
                .condition_expression("gsi2sk = :read AND gsi2pk = :due")
                .expression_attribute_names("#token", "token")
                .expression_attribute_values(":token", s(&token))
                .expression_attribute_values(":until", s(at_key(until, id)))
                .expression_attribute_values(":read", s(sk))
                .expression_attribute_values(":due", s("WHDUE"))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match out {
                Ok(out) => {
                    if let Some(item) = out.attributes() {
                        claimed.push(Claimed {
                            delivery: body_of(item)?,
                            token: token.clone(),
                        });
                    }
                }
                Err(e) if condition_failed(&e) => {}
                Err(e) => return Err(self.unavailable("UpdateItem claim delivery", &e)),
            }
        }
        Ok(claimed)
    }

    async fn record_attempt(&self, token: &str, record: &AttemptRecord) -> StoreResult<()> {
        let a = &record.attempt;
        let Some(mut delivery) = self.get_delivery(&a.delivery_id).await? else {
            return Err(StoreError::Conflict);
        };
        delivery.state = record.state;
        delivery.attempts = a.attempt;
        delivery.next_attempt_at = a.next_attempt_at;
        let (index, sort) = match (record.state, a.next_attempt_at) {
            (DeliveryState::Pending, Some(next)) => ("WHDUE", at_key(ms(next), &delivery.id)),
            _ => ("WHDONE", at_key(ms(a.at), &delivery.id)),
        };
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(delivery_pk(&delivery.id), "WHD")))
            .update_expression("SET body = :body, gsi2pk = :index, gsi2sk = :sort REMOVE #token")
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":body", s(to_json(&delivery)?))
            .expression_attribute_values(":index", s(index))
            .expression_attribute_values(":sort", s(sort))
            .expression_attribute_values(":token", s(token))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut item = key(delivery_pk(&delivery.id), &format!("A#{:04}", a.attempt));
        item.insert("body".into(), s(to_json(a)?));
        item.insert("gsi1pk".into(), s(endpoint_index(&a.endpoint_id)));
        item.insert(
            "gsi1sk".into(),
            s(format!(
                "A#{}#{:04}",
                at_key(ms(a.at), &delivery.id),
                a.attempt
            )),
        );
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let done = self
            .transact(
                "TransactWriteItems record attempt",
                vec![
                    TransactWriteItem::builder().update(update).build(),
                    TransactWriteItem::builder().put(put).build(),
                ],
            )
            .await?;
        if done {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(delivery_pk(id), "WHD")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem delivery", &e))?;
        out.item().map(body_of).transpose()
    }

    async fn list_attempts(
        &self,
        tenant: &str,
        endpoint_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<Attempt>> {
        if self.get_endpoint(tenant, endpoint_id).await?.is_none() {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :pk AND begins_with(gsi1sk, :a)")
            .expression_attribute_values(":pk", s(endpoint_index(endpoint_id)))
            .expression_attribute_values(":a", s("A#"))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| self.unavailable("Query attempts", &e))?;
        out.items().iter().map(body_of).collect()
    }

    async fn delete_finished_deliveries(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<usize> {
        let done = self
            .index_keys(
                "Query finished deliveries",
                GSI2,
                "#pk = :pk AND #sk < :before",
                HashMap::from([
                    (":pk".to_string(), s("WHDONE")),
                    (":before".to_string(), s(format!("{:013}", ms(before)))),
                ]),
                Some(limit),
            )
            .await?;
        for item in &done {
            if let Some(pk) = text(item, "pk") {
                self.delete_delivery(pk.trim_start_matches("WHD#")).await?;
            }
        }
        Ok(done.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_item(status: &str) -> Item {
        let mut item = key("JOB#job_01JZTGXW9Q2M4R8V0B1N3P5D7F".into(), "META");
        item.insert("status".into(), s(status));
        item.insert("tenant".into(), s("acme"));
        item
    }

    #[test]
    fn a_status_change_into_running_or_an_end_is_an_event() {
        let event = outbox_event("42", Some(&job_item("running")), &job_item("succeeded"))
            .expect("an event");
        assert_eq!(event.id, "42");
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.status, jobs::model::JobStatus::Succeeded);
        assert_eq!(event.job_id.as_str(), "job_01JZTGXW9Q2M4R8V0B1N3P5D7F");
        assert!(outbox_event("1", Some(&job_item("queued")), &job_item("running")).is_some());
        assert!(outbox_event("1", None, &job_item("canceled")).is_some());
    }

    #[test]
    fn renewals_other_statuses_and_other_items_are_not() {
        // A lease renewal rewrites the item without changing its status.
        assert!(outbox_event("1", Some(&job_item("running")), &job_item("running")).is_none());
        assert!(outbox_event("1", Some(&job_item("running")), &job_item("canceling")).is_none());
        assert!(outbox_event("1", None, &job_item("queued")).is_none());
        let mut progress = job_item("succeeded");
        progress.insert("sk".into(), s("PROGRESS"));
        assert!(outbox_event("1", None, &progress).is_none());
    }
}
