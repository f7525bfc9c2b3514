"""`GET/POST /subscribe/<list>`: the sign-up form, the same form embedded elsewhere, and JSON."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    jsonify,
    make_response,
    render_template,
    request,
    url_for,
)

from mailer.db import address_hash, normalize_email
from mailer.errors import InvalidInputError, MailerError, NotFoundError
from mailer.recipients.confirm import ConfirmationRequest
from mailer.recipients.web_signup import (
    SignupForm,
    WebSignup,
    check_signup,
    mail_confirmation,
    sign_up,
    signup_form,
)
from mailer.web.context import WebContext, client_ip, client_user_agent, web_context
from mailer.web.limits import limiter

subscribe_pages = Blueprint("subscribe", __name__)
log = logging.getLogger(__name__)

HONEYPOT = "website"
# the threads that record a sign-up and mail its confirmation beside the answer (tests wait for them)
SIGNUP_THREAD = "signup"
# bounds on what is read from a sign-up before the address is checked
MAX_FIELD_CHARS = 320


def _per_ip() -> str:
    return web_context().config.web.signup_limit_per_ip


def _per_address() -> str:
    return web_context().config.web.signup_limit_per_address


def _address_key() -> str:
    # the hash, not the address: the limiter's store never holds who signed up
    email = str(_fields().get("email", ""))[:MAX_FIELD_CHARS]
    return "address:" + address_hash(normalize_email(email.strip()) or "-")


def _fields() -> dict[str, Any]:
    """The sign-up's fields, from a form or a JSON object; reading enforces the body limit (413)."""
    if request.is_json:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}
    return request.form.to_dict()


def _form(list_name: str) -> SignupForm:
    context = web_context()
    try:
        with context.read_session() as session:
            form = signup_form(session, context.config, list_name)
    except NotFoundError:
        abort(404)
    # the hosted page posts to itself, wherever it is served from
    return dataclasses.replace(form, action=url_for("subscribe.subscribe_page", list_name=form.list_name))


@subscribe_pages.route("/subscribe/<list_name>", methods=["GET"], provide_automatic_options=False)
def subscribe_page(list_name: str) -> Response:
    response = make_response(render_template("web/subscribe.html", form=_form(list_name), error=""))
    # no token in this URL: the page may tell our own POST where the form was
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@subscribe_pages.route("/subscribe/<list_name>", methods=["OPTIONS"], provide_automatic_options=False)
def subscribe_preflight(list_name: str) -> Response:
    """The CORS preflight a browser sends before a JSON sign-up from another site."""
    response = make_response("", 204)
    if _allowed_origin():
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "3600"
    return _cors(response)


@subscribe_pages.route("/subscribe/<list_name>", methods=["POST"], provide_automatic_options=False)
@limiter.limit(_per_ip, methods=["POST"], scope="signup-ip")
@limiter.limit(_per_address, methods=["POST"], key_func=_address_key, scope="signup-address")
def subscribe_post(list_name: str) -> Response:
    """Take a sign-up; every address that passes the syntax check gets the same answer."""
    fields = _fields()
    as_json = request.is_json
    if as_json and request.headers.get("Origin") and not _allowed_origin():
        abort(403)
    form = _form(list_name)
    values = {key: str(fields.get(key, ""))[:MAX_FIELD_CHARS] for key in ("email", "name")}
    if fields.get(HONEYPOT):
        return _answer(form, as_json)  # a bot: it is told what a person is told, and nothing happens
    if fields.get("consent") not in ("yes", True):
        return _refused(form, values, "Please tick the box to say you want these emails.", as_json)
    try:
        signup = check_signup(WebSignup(email=values["email"], name=values["name"], ip=client_ip(),
                                        user_agent=client_user_agent(), page=_source_page()))
    except InvalidInputError as exc:
        return _refused(form, values, str(exc), as_json)
    answer = _answer(form, as_json)
    # recorded and mailed beside the answer: how long the writes and the relay take must not
    # tell a new address from one already known
    threading.Thread(target=_record_and_confirm, args=(web_context(), list_name, signup),
                     name=SIGNUP_THREAD).start()
    return answer


def _record_and_confirm(context: WebContext, list_name: str, signup: WebSignup) -> None:
    try:
        confirmation = _record(context, list_name, signup)
    except (MailerError, sa.exc.SQLAlchemyError):
        log.exception("a web sign-up for list %s could not be recorded", list_name)
        return
    if confirmation is not None:
        mail_confirmation(context.config, confirmation)


def _record(context: WebContext, list_name: str, signup: WebSignup) -> ConfirmationRequest | None:
    for attempt in (1, 2):
        try:
            with context.write_session() as session:
                return sign_up(session, context.config, list_name, signup)
        except sa.exc.IntegrityError:
            # the same new address from two requests at once (PostgreSQL): the second finds the first's row
            if attempt == 2:
                raise
    return None


def _answer(form: SignupForm, as_json: bool) -> Response:
    if as_json:
        return _cors(jsonify(status="check your inbox", list=form.list_name))
    return make_response(render_template("web/subscribe_sent.html", list_title=form.list_title))


def _refused(form: SignupForm, values: dict[str, str], reason: str, as_json: bool) -> Response:
    if as_json:
        return _cors(make_response(jsonify(error=reason), 400))
    page = render_template("web/subscribe.html", form=form, error=reason[:1].upper() + reason[1:], values=values)
    return make_response(page, 400)


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin", "")
    return origin if origin in web_context().config.web.allowed_origins else None


def _cors(response: Response) -> Response:
    origin = _allowed_origin()
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def _source_page() -> str | None:
    # a form on another site sends its page as Referer when that site allows, its Origin always
    origin = request.headers.get("Origin")
    # "null": a page that hides where it is (a no-referrer policy, a sandbox, a file)
    return request.referrer or (origin if origin and origin != "null" else None)
