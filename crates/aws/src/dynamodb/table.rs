//! The table itself, as the deployment template creates it (for tests and tools).

use super::*;

/// Creates the table as the deployment template does (for tests and local tooling):
/// on-demand, the tenant index projecting [`GSI1_ATTRIBUTES`], the active index all
/// attributes, TTL on `ttl`.
pub async fn create_table(client: &Client, table: &str) -> Result<(), aws_sdk_dynamodb::Error> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let schema = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("name and type are set")
    };
    let index = |name: &str, pk: &str, sk: &str, projection: Projection| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(schema(pk, KeyType::Hash))
            .key_schema(schema(sk, KeyType::Range))
            .projection(projection)
            .build()
            .expect("index fields are set")
    };
    let tenant_projection = Projection::builder()
        .projection_type(ProjectionType::Include)
        .set_non_key_attributes(Some(GSI1_ATTRIBUTES.map(String::from).to_vec()))
        .build();
    let all = Projection::builder()
        .projection_type(ProjectionType::All)
        .build();
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"]
                .into_iter()
                .map(attr)
                .collect(),
        ))
        .key_schema(schema("pk", KeyType::Hash))
        .key_schema(schema("sk", KeyType::Range))
        .global_secondary_indexes(index(GSI1, "gsi1pk", "gsi1sk", tenant_projection))
        .global_secondary_indexes(index(GSI2, "gsi2pk", "gsi2sk", all))
        .send()
        .await?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("ttl")
                .enabled(true)
                .build()
                .expect("ttl fields are set"),
        )
        .send()
        .await?;
    Ok(())
}
