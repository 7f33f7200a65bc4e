//! The `JobStore` on DynamoDB: not built yet. This module holds the design the
//! adapter will follow (issue 13), so the table can be reviewed before the code.
//!
//! *(Placeholder: the design is written below once the SQS, S3 and ECS adapters are
//! in.)*
