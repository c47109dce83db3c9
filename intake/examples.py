"""A copy-paste example of every operation, on the demo organisation ``leadrelay dev`` loads (its domains,
entities and users): the request body (per media type) and parameters, or for an operation that takes
nothing, its answer. /openapi.json carries them and docs/api.md shows them; tests/unit/test_api_schema.py
checks each against the operation's schema."""

from __future__ import annotations

from typing import Any

LEAD = "0b9d3c4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
OTHER_LEAD = "7a1e2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
INTAKE = "3f2e1d0c-9b8a-4776-8554-433221100fee"
IMPORT = "5c4b3a29-1807-4f6e-9d5c-4b3a29180716"
JOB = "9e8d7c6b-5a49-4837-a625-140f0e0d0c0b"
LEAD_PARAMETERS = {"lead_id": LEAD}

EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/healthz"): {"response": {"status": "ok"}},
    ("GET", "/readyz"): {"response": {"status": "ok", "database": "ok", "broker": "ok"}},
    ("GET", "/metrics"): {
        "response": '# TYPE leadrelay_intakes gauge\nleadrelay_intakes{source="registration",status="done"} 42.0\n'
    },
    ("POST", "/v1/intake/registrations"): {
        "body": {
            "application/json": {
                "page_url": "https://kvcore-demo.com/listings/42",
                "email": "gia@example.com",
                "first_name": "Gia",
                "phone": "+15550102042",
                "price_max": 1200000,
            }
        },
        "parameters": {"idempotency-key": "signup-gia-1"},
    },
    ("POST", "/v1/intake/activity"): {
        "body": {
            "application/json": {
                "page_url": "https://kvcore-demo.com/listings/123",
                "email": "ann@example.com",
                "kind": "property_save",
                "listing": {"mls_id": "123", "address": "12 Oak St"},
            }
        }
    },
    ("GET", "/v1/intake/registrations/candidates"): {
        "parameters": {"email": "ann@example.com", "page_url": "https://kvcore-demo.com/listings/42"}
    },
    ("GET", "/v1/intake/{intake_id}"): {"parameters": {"intake_id": INTAKE}},
    ("POST", "/v1/intake/providers/{format}"): {
        "parameters": {"format": "realtor_com"},
        "body": {
            "application/json": {
                "lead_id": "rdc-1001",
                "role": "buyer",
                "contact": {
                    "first_name": "Rita",
                    "last_name": "Moreno",
                    "email": "rita@example.com",
                    "phone": "(555) 010-4477",
                },
                "property": {
                    "address": "12 Elm St",
                    "city": "Springfield",
                    "state": "IL",
                    "zip_code": "62704",
                    "list_price": 425000,
                    "mls_id": "55123",
                },
                "message": "Is this home still available?",
                "timestamp": "2026-11-21T18:02:11Z",
            },
            "application/x-www-form-urlencoded": {
                "listingId": "HP-77123",
                "name": "Hank Price",
                "email": "hank@example.com",
                "phone": "555-010-9911",
                "message": "Pets allowed?",
            },
        },
    },
    ("POST", "/v1/events"): {
        "body": {
            "application/json": {
                "source": "Zillow",
                "system": "ZillowPremierAgent",
                "type": "Registration",
                "message": "Listing alerts under $450,000, please",
                "person": {
                    "firstName": "Rosa",
                    "lastName": "Delgado",
                    "emails": [{"value": "rosa@example.com"}],
                    "phones": [{"value": "(555) 010-3344"}],
                    "tags": ["Buyer"],
                },
                "property": {
                    "street": "48 Birch Ln",
                    "city": "Springfield",
                    "state": "IL",
                    "code": "62704",
                    "price": 435000,
                },
            }
        }
    },
    ("POST", "/v1/imports"): {
        "body": {"multipart/form-data": {"file": "email,first_name\nivy@example.com,Ivy\n", "owner": "demo-co"}}
    },
    ("GET", "/v1/imports/{import_id}"): {"parameters": {"import_id": IMPORT}},
    ("POST", "/v1/intake/sms/twilio"): {
        "body": {
            "application/x-www-form-urlencoded": {
                "MessageSid": "SM0123456789abcdef0123456789abcdef",
                "AccountSid": "ACdemo",
                "From": "+15550102042",
                "To": "+15550100000",
                "Body": "Is the house on Elm still available?",
                "NumMedia": "0",
            }
        }
    },
    ("POST", "/v1/intake/sms/twilio/status"): {
        "body": {
            "application/x-www-form-urlencoded": {
                "MessageSid": "SM0123456789abcdef0123456789abcdef",
                "MessageStatus": "delivered",
                "AccountSid": "ACdemo",
                "From": "+15550100000",
                "To": "+15550102042",
            }
        }
    },
    ("POST", "/v1/intake/replay"): {
        "body": {"application/json": {"status": "rejected", "since": "2026-11-01T00:00:00Z"}}
    },
    ("GET", "/v1/leads"): {"parameters": {"owner": "demo-co", "status": "active", "limit": 50}},
    ("GET", "/v1/leads/{lead_id}"): {"parameters": LEAD_PARAMETERS},
    ("PATCH", "/v1/leads/{lead_id}"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"first_name": "Gia", "phone": "+15550102042", "tags": ["buyer", "hot"]}},
    },
    ("DELETE", "/v1/leads/{lead_id}"): {"parameters": LEAD_PARAMETERS},
    ("GET", "/v1/leads/{lead_id}/timeline"): {"parameters": {**LEAD_PARAMETERS, "limit": 100}},
    ("POST", "/v1/leads/{lead_id}/messages"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"body": "Hi Gia, it's John: would Saturday at 10 work for a tour?"}},
    },
    ("POST", "/v1/routing/simulate"): {
        "body": {"application/json": {"page_url": "https://kvcore-demo.com/x", "price_max": 2000000}}
    },
    ("POST", "/v1/leads/{lead_id}/assign"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"agent_id": "jill"}},
    },
    ("POST", "/v1/leads/{lead_id}/shares"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"user_id": "bob", "permission": "edit"}},
    },
    ("DELETE", "/v1/leads/{lead_id}/shares/{user_id}"): {"parameters": {**LEAD_PARAMETERS, "user_id": "bob"}},
    ("POST", "/v1/leads/{lead_id}/transfer"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"to": "sunrise"}},
    },
    ("POST", "/v1/leads/{lead_id}/archive"): {"parameters": LEAD_PARAMETERS},
    ("POST", "/v1/leads/{lead_id}/unsubscribe"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"channel": "sms"}},
    },
    ("GET", "/v1/leads/{lead_id}/campaigns"): {"parameters": LEAD_PARAMETERS},
    ("POST", "/v1/leads/{lead_id}/campaigns"): {
        "parameters": LEAD_PARAMETERS,
        "body": {"application/json": {"name": "New buyer drip"}},
    },
    ("DELETE", "/v1/leads/{lead_id}/campaigns/{name}"): {"parameters": {**LEAD_PARAMETERS, "name": "New buyer drip"}},
    ("POST", "/v1/leads/merge/preview"): {
        "body": {"application/json": {"primary_id": LEAD, "other_id": OTHER_LEAD, "assigned_agent_id": "john"}}
    },
    ("POST", "/v1/leads/merge"): {"body": {"application/json": {"primary_id": LEAD, "other_id": OTHER_LEAD}}},
    ("POST", "/v1/leads/bulk"): {
        "body": {"application/json": {"action": "transfer", "lead_ids": [LEAD, OTHER_LEAD], "to": "sunrise"}}
    },
    ("GET", "/v1/jobs/{job_id}"): {"parameters": {"job_id": JOB}},
    ("GET", "/v1/export.csv"): {
        "response": "id,first_name,last_name,email,phone,status,owner,owner_kind,assigned_agent,source_kind,"
        "source_detail,tags,created_at\n"
        f"{LEAD},Gia,,gia@example.com,+15550102042,active,demo-co,company,john,site,kvcore-demo.com,buyer,"
        "2026-11-21T18:02:11+00:00\n"
    },
    ("POST", "/v1/teams/{team_id}/members/{agent_id}/leave"): {
        "parameters": {"team_id": "sunrise", "agent_id": "tara"}
    },
    ("GET", "/v1/webhooks"): {
        "response": {
            "webhooks": [
                {
                    "id": "crm",
                    "url": "https://crm.example.com/hooks/leadrelay",
                    "events": ["*"],
                    "active": True,
                    "disabled_at": None,
                    "disabled_reason": None,
                    "secrets": 1,
                    "deliveries": {"pending": 0, "delivered": 12, "failed": 1},
                }
            ]
        }
    },
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): {
        "parameters": {"webhook_id": "crm", "status": "failed", "limit": 50}
    },
    ("POST", "/v1/webhooks/{webhook_id}/replay"): {
        "parameters": {"webhook_id": "crm"},
        "body": {"application/json": {"since": "2026-11-01T00:00:00Z"}},
    },
}
