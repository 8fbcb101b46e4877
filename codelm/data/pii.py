"""PII and secret redaction: emails, public IP addresses, keys, tokens and passwords.

Replacements follow StarCoder's: `<EMAIL>`, `<IP_ADDRESS>`, `<KEY>`,
`<PASSWORD>`. Vendor token formats (AWS, GitHub, GitLab, Slack, Stripe, OpenAI,
PyPI, npm, JWT, ...) are the regexes of the `detect-secrets` plugins, applied
to the whole file at once rather than line by line, which is what makes it
fast enough for a corpus. What must survive is as important as what must go:
private, loopback and documentation IPs, version numbers that look like IPs,
`@decorators`, and placeholder or low-entropy "passwords" are left alone.
"""

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

from datatrove.pipeline.base import PipelineStep
from detect_secrets.plugins import (
    aws,
    azure_storage_key,
    basic_auth,
    discord,
    github_token,
    gitlab_token,
    jwt,
    mailchimp,
    npm,
    openai,
    pypi_token,
    sendgrid,
    slack,
    stripe,
    telegram_token,
    twilio,
)

from codelm.config import knob

TOKEN_DETECTORS = [
    aws.AWSKeyDetector, azure_storage_key.AzureStorageKeyDetector,
    basic_auth.BasicAuthDetector, discord.DiscordBotTokenDetector, github_token.GitHubTokenDetector,
    gitlab_token.GitLabTokenDetector, jwt.JwtTokenDetector, mailchimp.MailchimpDetector, npm.NpmDetector,
    openai.OpenAIDetector, pypi_token.PypiTokenDetector, sendgrid.SendGridDetector, slack.SlackDetector,
    stripe.StripeDetector, telegram_token.TelegramBotTokenDetector, twilio.TwilioKeyDetector,
]
TOKEN_PATTERNS = [regex for detector in TOKEN_DETECTORS for regex in detector.denylist]

PRIVATE_KEY = re.compile(
    r"-----BEGIN ((?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----.*?-----END \1-----"
    r"|-----BEGIN ((?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----[\s\S]*\Z",
    re.S,
)
EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][\w.+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b(?![(:/])"
)  # not f@x.call(), not git@host:repo
IPV4 = re.compile(r"(?<![\w.:])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w.]|::)")
VERSION_CONTEXT = re.compile(r"(?i)version|release|\bv$|[=<>~!]=")  # on the same line, just before
# Anchored on the keyword, not the name's start: scanning every word start for a name is 10x slower.
ASSIGNMENT = re.compile(
    r"(?i)(pass(?:word|wd)?|pwd|secret|token|api_?key|apikey|auth_?key|access_?key|private_?key)"
    r"[\w-]*['\"]?\s*(?::=|=>|==|=|:)\s*[rbuf]?(['\"])([^'\"\s]{8,200})\2"
)
PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|<[^>]*>|\$\{?\w+\}?|%\(?\w*\)?s|\{\w*\}|your[\w-]*|change_?me\w*|"
    r"example\w*|dummy\w*|test\w*|fake\w*|none|null|true|false|password\w*|secret\w*)$"
)


@dataclass
class PIIConfig:
    enabled: bool = knob(True, "redact emails, IP addresses, keys and secrets")
    min_entropy: float = knob(3.0, "bits per character of a value assigned to a secret-looking name")


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _keep_ip(text: str, start: int, value: str) -> bool:
    """Private, loopback, documentation and other reserved addresses, and version numbers, are not PII."""
    line_start = text.rfind("\n", 0, start) + 1
    if VERSION_CONTEXT.search(text[max(line_start, start - 30) : start]):
        return True
    try:
        ip = ipaddress.IPv4Address(value)
    except ipaddress.AddressValueError:  # leading zeros: an OID or a date, not an address
        return True
    return not ip.is_global or ip.is_multicast


def _looks_secret(value: str, min_entropy: float) -> bool:
    if PLACEHOLDER.match(value) or value.isalpha() and value.islower():
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    return classes >= 2 and shannon_entropy(value) >= min_entropy


def redact(text: str, min_entropy: float = 3.0) -> tuple[str, Counter]:
    """The text with PII replaced, and how many of each kind were replaced."""
    counts: Counter = Counter()
    spans: list[tuple[int, int, str]] = []  # (start, end, replacement), resolved left to right below

    for m in PRIVATE_KEY.finditer(text):
        spans.append((m.start(), m.end(), "<KEY>"))
    for regex in TOKEN_PATTERNS:
        for m in regex.finditer(text):
            # A first group after the match start is the secret in its context (AWS, URL passwords);
            # one at the start is only a prefix (ghp_)
            use_group = m.re.groups and m.group(1) and m.start(1) > m.start()
            spans.append((*(m.span(1) if use_group else m.span()), "<KEY>"))
    for m in ASSIGNMENT.finditer(text):
        keyword, value = m.group(1), m.group(3)
        if _looks_secret(value, min_entropy):
            kind = "<PASSWORD>" if re.match(r"(?i)pass|pwd", keyword) else "<KEY>"
            spans.append((m.start(3), m.end(3), kind))
    for m in EMAIL.finditer(text):
        spans.append((m.start(), m.end(), "<EMAIL>"))
    for m in IPV4.finditer(text):
        if not _keep_ip(text, m.start(), m.group()):
            spans.append((m.start(), m.end(), "<IP_ADDRESS>"))
    if not spans:
        return text, counts

    priority = {"<KEY>": 0, "<PASSWORD>": 1, "<EMAIL>": 2, "<IP_ADDRESS>": 3}  # a URL's password is not an email
    spans.sort(key=lambda s: (s[0], priority[s[2]], -s[1]))
    out, cursor = [], 0
    for start, end, replacement in spans:
        if start < cursor:  # inside a span already replaced (an email inside a key block)
            continue
        out += [text[cursor:start], replacement]
        counts[replacement.strip("<>").lower()] += 1
        cursor = end
    out.append(text[cursor:])
    return "".join(out), counts


class RedactPII(PipelineStep):
    type = "🔏 - PII"
    name = "🕵 redact PII and secrets"

    def __init__(self, config: PIIConfig | None = None):
        super().__init__()
        self.config = config or PIIConfig()

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                doc.text, counts = redact(doc.text, self.config.min_entropy)
                for kind, n in counts.items():
                    self.stat_update(f"redacted_{kind}", value=n)
                if counts:
                    self.stat_update("docs_redacted")
                    doc.metadata["size"] = len(doc.text.encode())
            yield doc
