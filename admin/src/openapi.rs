//! The OpenAPI document, generated from the handlers' annotations and the
//! request and response types, served at `GET /openapi.json`.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{cluster, error, overview, publish, topics};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sse-admin",
        description = "Topics, cluster view and HTTP publishing for sse-cluster. \
                       Every request except the read-only pages needs `Authorization: Bearer <admin.token>`; \
                       `admin.publish_token`, when set, opens `POST /v1/topics/{name}/events` only (403 elsewhere)."
    ),
    paths(
        topics::create_topic,
        topics::list_topics,
        topics::get_topic,
        topics::update_topic,
        topics::delete_topic,
        topics::purge_topic,
        topics::list_subjects,
        publish::publish_event,
        cluster::list_nodes,
        overview::get_overview,
        overview::dashboard_stream,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "topics", description = "Topic life cycle: one JetStream stream per topic"),
        (name = "publish", description = "Publish events over HTTP"),
        (name = "cluster", description = "Live nodes"),
        (name = "dashboard", description = "Read-only figures, no token needed"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
