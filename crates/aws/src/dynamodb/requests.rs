//! The reads, writes and transactions the port methods are made of: item
//! collections, conditional puts, index queries, `TransactWriteItems` with bounded,
//! jittered retries, admission and the moves of a job.

use super::*;

impl DynamoJobStore {
    /// `clock` decides what has expired: TTL deletes late, so reads filter.
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        DynamoJobStore {
            client,
            table: table.into(),
            clock,
            list_read_budget: LIST_READ_BUDGET,
        }
    }

    /// Sets the rows a label-filtered listing examines per page (tests use a small one).
    pub fn with_list_read_budget(mut self, rows: usize) -> Self {
        self.list_read_budget = rows.max(1);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(super) fn unavailable(
        &self,
        op: &str,
        err: &(dyn std::error::Error + 'static),
    ) -> StoreError {
        StoreError::Unavailable(crate::error::describe(op, &self.table, err))
    }

    /// The job's `META` item, whole (for `create_job`).
    pub(super) fn job_item(&self, job: &Job) -> StoreResult<Item> {
        let mut item = key(job_pk(&job.id), "META");
        for (name, value) in job_attributes(job)? {
            if let Some(value) = value {
                item.insert(name.to_string(), value);
            }
        }
        Ok(item)
    }

    /// A job from its `META` item (outputs not attached), or None if it has expired.
    pub(super) fn job_from_meta(&self, item: &Item) -> StoreResult<Option<Job>> {
        let mut job: Job = body_of(item)?;
        restore_job_attributes(&mut job, item)?;
        job.enqueued = matches!(item.get("enqueued"), Some(AttributeValue::Bool(true)));
        Ok((job.expires_at > self.clock.now()).then_some(job))
    }

    /// Every item of a job's collection, in key order (consistent).
    pub(super) async fn collection(&self, id: &JobId) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(job_pk(id)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query job", &e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// The job (with its outputs) and its progress record, from one collection read.
    pub(super) async fn read_job(
        &self,
        id: &JobId,
    ) -> StoreResult<Option<(Job, Option<ProgressRecord>)>> {
        let items = self.collection(id).await?;
        let Some(meta) = items.iter().find(|i| sort_key(i) == "META") else {
            return Ok(None);
        };
        let Some(mut job) = self.job_from_meta(meta)? else {
            return Ok(None);
        };
        let count = number(meta, "out_count").unwrap_or(0) as usize;
        let prefix = format!("OUT#{:05}#", job.attempt);
        job.outputs = items
            .iter()
            .filter(|i| sort_key(i).starts_with(&prefix))
            .take(count)
            .map(body_of::<OutputRecord>)
            .collect::<StoreResult<_>>()?;
        let progress = items
            .iter()
            .find(|i| sort_key(i) == "PROGRESS" && i.contains_key("body"))
            .map(body_of)
            .transpose()?;
        Ok(Some((job, progress)))
    }

    /// A job read from an index (which holds only `META` items), outputs attached.
    pub(super) async fn attach_outputs(&self, item: &Item) -> StoreResult<Option<Job>> {
        let Some(job) = self.job_from_meta(item)? else {
            return Ok(None);
        };
        if number(item, "out_count").unwrap_or(0) == 0 {
            return Ok(Some(job));
        }
        Ok(self.read_job(&job.id).await?.map(|(job, _)| job))
    }

    pub(super) async fn write_outputs(&self, job: &Job) -> StoreResult<()> {
        let mut requests = Vec::new();
        for (i, output) in job.outputs.iter().enumerate() {
            let mut item = key(job_pk(&job.id), &output_sk(job.attempt, i));
            item.insert("body".into(), s(to_json(output)?));
            item.insert("ttl".into(), n(job.expires_at.timestamp()));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| self.unavailable("BatchWriteItem outputs", &e))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.batch_write("BatchWriteItem outputs", requests).await
    }

    /// Jobs in an active `status` (one partition of the sparse index) older than
    /// `below` (or all), unclaimed at `unclaimed_at` if given, counted up to `cap`
    /// (and a bounded number of pages).
    pub(super) async fn count_active(
        &self,
        status: JobStatus,
        below: Option<&JobId>,
        unclaimed_at: Option<DateTime<Utc>>,
        cap: u64,
    ) -> StoreResult<u64> {
        let mut total = 0u64;
        let mut start = None;
        let mut condition = "gsi2pk = :q".to_string();
        if below.is_some() {
            condition.push_str(" AND gsi2sk < :id");
        }
        for _ in 0..READ_BUDGET_PAGES * 10 {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .select(Select::Count)
                .key_condition_expression(&condition)
                .expression_attribute_values(":q", s(format!("ACTIVE#{}", status.as_str())))
                .set_exclusive_start_key(start);
            if let Some(id) = below {
                query = query.expression_attribute_values(":id", s(id.as_str()));
            }
            if let Some(now) = unclaimed_at {
                query = query
                    .filter_expression("attribute_not_exists(#ru) OR #ru <= :now")
                    .expression_attribute_names("#ru", "reserved_until")
                    .expression_attribute_values(":now", n(now.timestamp_millis()));
            } else {
                query = query.limit((cap - total).clamp(1, i32::MAX as u64) as i32);
            }
            let out = query
                .send()
                .await
                .map_err(|e| self.unavailable("Query active count", &e))?;
            total += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if total >= cap || start.is_none() {
                break;
            }
        }
        Ok(total.min(cap))
    }

    pub(super) async fn get_item(&self, pk: String, sk: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("GetItem", &e))?;
        Ok(out.item)
    }

    pub(super) async fn get_body<T: DeserializeOwned>(
        &self,
        pk: String,
        sk: &str,
    ) -> StoreResult<Option<T>> {
        self.get_item(pk, sk)
            .await?
            .as_ref()
            .map(body_of)
            .transpose()
    }

    pub(super) async fn put_body<T: Serialize>(
        &self,
        pk: String,
        sk: &str,
        value: &T,
        extra: Vec<(&str, AttributeValue)>,
    ) -> StoreResult<()> {
        let mut item = key(pk, sk);
        item.insert("body".into(), s(to_json(value)?));
        for (name, value) in extra {
            item.insert(name.to_string(), value);
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.unavailable("PutItem", &e))?;
        Ok(())
    }

    pub(super) async fn delete_item(&self, pk: String, sk: &str) -> StoreResult<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| self.unavailable("DeleteItem", &e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// The items of one index partition (bounded by the read budget).
    pub(super) async fn query_index(
        &self,
        index: &str,
        pk_name: &str,
        pk: String,
        descending: bool,
    ) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        for _ in 0..READ_BUDGET_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(format!("{pk_name} = :pk"))
                .expression_attribute_values(":pk", s(pk.clone()))
                .scan_index_forward(!descending)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.unavailable("Query index", &e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// Sends a transaction. One that another transaction held an item of
    /// (`TransactionConflict`) is retried a bounded number of times; one that a
    /// condition refused is answered with each item's reason, never as an error.
    pub(super) async fn transact(
        &self,
        op: &str,
        items: Vec<TransactWriteItem>,
    ) -> StoreResult<Transacted> {
        for attempt in 0..TRANSACTION_TRIES {
            let err = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            {
                Ok(_) => return Ok(Transacted::Done),
                Err(e) => e,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                err.as_service_error()
            {
                let reasons = cancel.cancellation_reasons();
                if reasons.iter().any(|r| is_condition_failure(r.code())) {
                    return Ok(Transacted::Refused(
                        reasons
                            .iter()
                            .map(|r| Reason {
                                failed: is_condition_failure(r.code()),
                                old: r.item().cloned(),
                            })
                            .collect(),
                    ));
                }
                if reasons
                    .iter()
                    .any(|r| r.code() == Some("TransactionConflict"))
                    && attempt + 1 < TRANSACTION_TRIES
                {
                    backoff(attempt).await;
                    continue;
                }
            }
            return Err(self.unavailable(op, &err));
        }
        unreachable!("the last try returns")
    }

    /// `BatchWriteItem` in chunks of 25; unprocessed items (throttling) are retried a
    /// bounded number of times.
    pub(super) async fn batch_write(
        &self,
        op: &str,
        requests: Vec<WriteRequest>,
    ) -> StoreResult<()> {
        for chunk in requests.chunks(25) {
            let mut pending = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            for _ in 0..5 {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(|e| self.unavailable(op, &e))?;
                pending = out.unprocessed_items.unwrap_or_default();
                if pending.values().all(Vec::is_empty) {
                    break;
                }
            }
            if !pending.values().all(Vec::is_empty) {
                return Err(StoreError::Unavailable(format!(
                    "{op} on {}: throttled",
                    self.table
                )));
            }
        }
        Ok(())
    }

    /// The tenant's stream slot items, by slot number (one consistent `Query`).
    pub(super) async fn stream_slots(&self, tenant: &str) -> StoreResult<Vec<(u32, Item)>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :slot)")
            .expression_attribute_values(":pk", s(tenant_pk(tenant)))
            .expression_attribute_values(":slot", s("STREAM#"))
            .send()
            .await
            .map_err(|e| self.unavailable("Query stream slots", &e))?;
        Ok(out
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|item| {
                let index = sort_key(&item).strip_prefix("STREAM#")?.parse().ok()?;
                Some((index, item))
            })
            .collect())
    }

    /// `ADD {counter} :delta` on the tenant's usage item, unconditioned: the part of a
    /// transaction that keeps the counter in step with the write beside it.
    pub(super) fn usage_delta(
        &self,
        tenant: &str,
        counter: &str,
        delta: i64,
    ) -> StoreResult<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), "USAGE")))
            .update_expression("ADD #c :d")
            .expression_attribute_names("#c", counter)
            .expression_attribute_values(":d", n(delta))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems usage", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Part of the write that ends a job: marks its progress item `closed`, so that a
    /// runner's late progress write (it had not yet seen the cancel) is refused and the
    /// finished job's progress stays as it was. Creates a bare item if none was written.
    pub(super) fn close_progress(&self, id: &JobId) -> StoreResult<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), "PROGRESS")))
            .update_expression("SET #closed = :t")
            .expression_attribute_names("#closed", "closed")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems progress", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The admission of one more active job: `ADD active 1` on the tenant's usage item,
    /// conditioned on the quota. The submit rate is a fixed one-second window kept in
    /// the same item (`window`, the epoch second; `in_window`, jobs recorded in it);
    /// an update cannot branch, so the branch is chosen on `seen` (the item as last
    /// read) and the condition pins the window it saw: a lost race is refused and
    /// retried on the item the refusal returns. A window ahead of `now` (another
    /// instance's clock) is taken as the current one, so windows never go back.
    pub(super) fn admission(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
        quota: &TenantQuota,
        seen: Option<&Item>,
    ) -> StoreResult<TransactWriteItem> {
        let mut adds = vec!["#active :one"];
        let mut sets = Vec::new();
        let mut conditions = Vec::new();
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), "USAGE")))
            .expression_attribute_names("#active", "active")
            .expression_attribute_values(":one", n(1))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if quota.max_active_jobs != u32::MAX {
            conditions.push("(attribute_not_exists(#active) OR #active < :max)");
            update = update.expression_attribute_values(":max", n(quota.max_active_jobs));
        }
        if quota.submits_per_second != u32::MAX {
            let second = now.timestamp();
            update = update
                .expression_attribute_names("#window", "window")
                .expression_attribute_names("#in_window", "in_window");
            let window = seen
                .and_then(|item| item.get("window"))
                .and_then(|w| match w {
                    AttributeValue::N(raw) => raw.parse::<i64>().ok(),
                    _ => None,
                });
            match window {
                Some(w) if w >= second => {
                    adds.push("#in_window :one");
                    conditions.push("#window = :w AND #in_window < :rate");
                    update = update
                        .expression_attribute_values(":w", n(w))
                        .expression_attribute_values(":rate", n(quota.submits_per_second));
                }
                Some(w) => {
                    sets.push("#window = :second, #in_window = :one");
                    conditions.push("#window = :w");
                    update = update
                        .expression_attribute_values(":w", n(w))
                        .expression_attribute_values(":second", n(second));
                }
                None => {
                    sets.push("#window = :second, #in_window = :one");
                    conditions.push("attribute_not_exists(#window)");
                    update = update.expression_attribute_values(":second", n(second));
                }
            }
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression.push_str(&format!("SET {} ", sets.join(", ")));
        }
        expression.push_str(&format!("ADD {}", adds.join(", ")));
        let update = update
            .update_expression(expression)
            .set_condition_expression((!conditions.is_empty()).then(|| conditions.join(" AND ")))
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems admission", &e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// One move of a job: `META` replaced if its `rev` is `expected_rev` and its class
    /// (active: it carries `gsi2pk`) is `was_active`; when the class changes, the
    /// tenant's `active` count moves in the same `TransactWriteItems`, else it is one
    /// `UpdateItem`. Ok(false): the revision matched but the class did not (the caller
    /// guessed wrong); a revision that moved is `Conflict`.
    pub(super) async fn move_job(
        &self,
        job: &Job,
        expected_rev: u64,
        was_active: bool,
    ) -> StoreResult<bool> {
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (name, value) in job_attributes(job)? {
            names.insert(format!("#{name}"), name.to_string());
            match value {
                Some(value) => {
                    sets.push(format!("#{name} = :{name}"));
                    values.insert(format!(":{name}"), value);
                }
                None => removes.push(format!("#{name}")),
            }
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        values.insert(":expected".into(), n(expected_rev));
        let condition = if was_active {
            "#rev = :expected AND attribute_exists(#gsi2pk)"
        } else {
            "#rev = :expected AND attribute_not_exists(#gsi2pk)"
        };
        let is_active = !job.status.is_terminal();
        // The stored job at `expected_rev` (so the move is not lost) in the other class.
        let other_class = |old: Option<&Item>| match old {
            Some(old) if number(old, "rev") == Some(expected_rev) => Ok(false),
            _ => Err(StoreError::Conflict),
        };
        if is_active == was_active {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(job_pk(&job.id), "META")))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            return match result {
                Ok(_) => Ok(true),
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(ccf)) => {
                        other_class(ccf.item())
                    }
                    _ => Err(self.unavailable("UpdateItem job", &e)),
                },
            };
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&job.id), "META")))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems job", &e))?;
        let delta = if is_active { 1 } else { -1 };
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            self.usage_delta(&job.tenant, "active", delta)?,
        ];
        if !is_active {
            items.push(self.close_progress(&job.id)?);
        }
        match self.transact("TransactWriteItems job", items).await? {
            Transacted::Done => Ok(true),
            refused => match refused.refused_at(0) {
                Some(old) => other_class(old),
                None => Err(StoreError::Unavailable(format!(
                    "TransactWriteItems job on {}: refused without a reason",
                    self.table
                ))),
            },
        }
    }

    /// The quota limit that `usage` (the tenant's usage item as a refusal returned it)
    /// leaves no room under, if any; None means the refusal was a lost race.
    pub(super) fn refusal(
        usage: &Item,
        now: DateTime<Utc>,
        quota: &TenantQuota,
    ) -> Option<QuotaRefusal> {
        if quota.max_active_jobs != u32::MAX
            && signed(usage, "active") >= i64::from(quota.max_active_jobs)
        {
            return Some(QuotaRefusal::ActiveJobs {
                limit: quota.max_active_jobs,
            });
        }
        if quota.submits_per_second != u32::MAX
            && usage.contains_key("window")
            && signed(usage, "window") >= now.timestamp()
            && signed(usage, "in_window") >= i64::from(quota.submits_per_second)
        {
            return Some(QuotaRefusal::SubmitRate {
                limit: quota.submits_per_second,
            });
        }
        None
    }

    /// The idempotency record's `Put`, if its key is free (or its record expired).
    pub(super) fn idempotency_put(
        &self,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> StoreResult<TransactWriteItem> {
        let mut item = key(
            format!("IDEM#{}", pair(&record.tenant, &record.key)),
            "IDEM",
        );
        item.insert("body".into(), s(to_json(record)?));
        item.insert("expires".into(), n(record.expires_at.timestamp_millis()));
        item.insert("ttl".into(), n(record.expires_at.timestamp()));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #expires <= :now")
            .expression_attribute_names("#expires", "expires")
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.unavailable("TransactWriteItems", &e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}
