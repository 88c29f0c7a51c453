# The sandbox's egress decisions, evaluated by the proxy with regorus.
#
# The proxy hands over the validated policy as data (data.policy, built by
# src/policy/engine/data.rs) and asks two questions:
#   data.openshell.sandbox.network  may a connection to input.network.{host,port} open?  (L4)
#   data.openshell.sandbox.request  may input.request.{method,path,query_params} be sent? (L7)
# Inputs are already normalised: hosts lower case without a trailing dot, paths canonical.
# input.request holds the request as sent (method, path, query_params read strictly) for
# allow rules, and input.request.deny_view the widest reading of it for deny rules (built
# by src/policy/request.rs): method upper case, paths lower case with and without a
# trailing slash and the last segment's extension, query names lower case with every
# lower-case value any reading gives them (deny rules' query names and globs are lowered
# in data.policy to match).
# Every answer is an object with "allow" and "reason"; a missing or malformed answer is
# treated as a denial by the proxy (fail closed).
#
# OPENSHELL_POLICY_RULES may replace this file; a replacement must answer the same two
# rules with the same shape.
package openshell.sandbox

import rego.v1

# ------------------------------------------------------------------------------- L4

# Endpoints with an exact host: looked up in an index keyed by host, so the cost of a
# decision does not grow with the number of policies; then the port must be listed.
matched contains i if {
	some i in data.policy.exact_hosts[input.network.host]
	input.network.port in data.policy.endpoints[i].ports
}

# Endpoints with a wildcard host: the literal suffix after the last wildcard label is a
# cheap filter, the anchored label pattern (one label per `*`, one or more for a
# leading `**`) decides.
matched contains i if {
	some i in data.policy.glob_endpoints
	ep := data.policy.endpoints[i]
	endswith(input.network.host, ep.suffix)
	input.network.port in ep.ports
	regex.match(ep.regex, input.network.host)
}

# The endpoint reported as "the" match: the first in policy-key order.
first := min(matched)

# No endpoint admits the destination: deny (the policy is an allow-list).
default network := {"allow": false, "reason": "no network policy allows this host and port"}

# Some endpoint admits it: allow, naming the policy and every matched endpoint (the
# proxy uses them to decide on TLS interception and private-address exceptions).
network := {
	"allow": true,
	"policy": data.policy.endpoints[first].policy,
	"endpoints": sort(matched),
	"reason": sprintf("allowed by %s", [data.policy.endpoints[first].id]),
} if count(matched) > 0

# ------------------------------------------------------------------------------- L7

# A method list matches when it is empty (any method) or names the request's method.
method_matches(methods) if count(methods) == 0

method_matches(methods) if input.request.method in methods

# A value matches a query matcher when one of its globs matches it.
value_matches(globs, v) if {
	some g in globs
	glob.match(g, null, v)
}

# A query matcher is met when the parameter is present and every one of its values
# matches (so `?a=ok&a=evil` does not pass a matcher for "ok"). Written as "no value
# fails" rather than with `every`, which regorus's VM mis-evaluates when the body looks
# data up by the loop variable (regorus 0.14.1).
query_met(globs, values) if {
	count(values) > 0
	failing := [v | some v in values; not value_matches(globs, v)]
	count(failing) == 0
}

# An allow rule matches when its method, path glob (`*` within a segment, `**` across
# segments) and every query matcher match.
rule_matches(rule) if {
	method_matches(rule.methods)
	glob.match(rule.path, ["/"], input.request.path)
	unmet := [name | some name, globs in rule.query; not query_met(globs, object.get(input.request.query_params, name, []))]
	count(unmet) == 0
}

# A deny rule reads the request the widest way (fail closed): its method in upper case;
# one of its path patterns (the glob lower-cased, plus `/x` for a glob `/x/**`) matching
# one form of the path; and for each query matcher, ANY value some reading gives the
# parameter matching (so `?service=ok&service=evil`, `SERVICE=evil` and `x=1;service=evil`
# all meet a matcher for "evil").
deny_rule_matches(rule) if {
	deny_method_matches(rule.methods)
	deny_path_matches(rule.paths)
	unmet := [name | some name, globs in rule.query; not deny_query_met(globs, lower(name))]
	count(unmet) == 0
}

deny_method_matches(methods) if count(methods) == 0

deny_method_matches(methods) if input.request.deny_view.method in methods

deny_path_matches(patterns) if {
	some pattern in patterns
	some path in input.request.deny_view.paths
	glob.match(pattern, ["/"], path)
}

deny_query_met(globs, name) if {
	some v in object.get(input.request.deny_view.query, name, [])
	value_matches(globs, v)
}

# Deny rules of any matched endpoint; a deny wins over every allow.
denied_by contains [rule.id, rule.policy] if {
	some i in matched
	some rule in data.policy.endpoints[i].deny_rules
	deny_rule_matches(rule)
}

# An L4-only endpoint (no protocol) allows every request on its connections.
allowed_by contains [ep.id, ep.policy] if {
	some i in matched
	ep := data.policy.endpoints[i]
	ep.protocol == ""
}

# An inspected endpoint allows what one of its rules (or its access preset) matches.
allowed_by contains [rule.id, rule.policy] if {
	some i in matched
	some rule in data.policy.endpoints[i].rules
	rule_matches(rule)
}

# Matched endpoints that inspect requests, by their enforcement.
audited contains i if {
	some i in matched
	data.policy.endpoints[i].protocol != ""
	data.policy.endpoints[i].enforcement == "audit"
}

enforcing contains i if {
	some i in matched
	data.policy.endpoints[i].protocol != ""
	data.policy.endpoints[i].enforcement != "audit"
}

# Audit mode applies only when every matched inspected endpoint asks for it, so one
# enforcing endpoint for the same host keeps denials enforced (fail closed).
enforcement := "audit" if {
	count(audited) > 0
	count(enforcing) == 0
} else := "enforce"

# Nothing admits the connection at all.
default request := {"allow": false, "reason": "no network policy allows this host and port", "enforcement": "enforce"}

# A deny rule matched: deny, naming it.
request := {
	"allow": false,
	"rule": min(denied_by)[0],
	"policy": min(denied_by)[1],
	"reason": sprintf("denied by %s", [min(denied_by)[0]]),
	"enforcement": enforcement,
} if {
	count(denied_by) > 0
} else := {
	# No deny and some allow: allow, naming the first allowing rule.
	"allow": true,
	"rule": min(allowed_by)[0],
	"policy": min(allowed_by)[1],
	"reason": sprintf("allowed by %s", [min(allowed_by)[0]]),
	"enforcement": enforcement,
} if {
	count(allowed_by) > 0
} else := {
	# The host is allowed but no rule admits this request.
	"allow": false,
	"policy": data.policy.endpoints[first].policy,
	"reason": sprintf("no rule of %s allows %s %s", [data.policy.endpoints[first].policy, input.request.method, input.request.path]),
	"enforcement": enforcement,
} if {
	count(matched) > 0
}
