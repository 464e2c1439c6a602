"""One-time login links, as Jupyter prints its token URL.

The token is an HMAC over the user's pk, password hash and last_login, so logging in
(which moves last_login) spends it; nothing is stored.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.http import HttpResponseForbidden
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from django.utils.encoding import force_bytes, force_str
from django.utils.http import base36_to_int, urlsafe_base64_decode, urlsafe_base64_encode
from django.views.decorators.cache import never_cache


class LoginLinkTokens(PasswordResetTokenGenerator):
    key_salt = "audobon.login_link"

    def check_token(self, user, token) -> bool:
        # Same check as the parent, with the login link's own lifetime instead of
        # PASSWORD_RESET_TIMEOUT.
        if not (user and token) or "-" not in token:
            return False
        ts_b36 = token.split("-", 1)[0]
        try:
            ts = base36_to_int(ts_b36)
        except ValueError:
            return False
        if self._num_seconds(self._now()) - ts > settings.AUDOBON_LOGIN_LINK_SECONDS:
            return False
        return any(
            constant_time_compare(self._make_token_with_timestamp(user, ts, secret), token)
            for secret in [self.secret, *self.secret_fallbacks]
        )


tokens = LoginLinkTokens()


def login_link_path(user) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse("login_link", kwargs={"uidb64": uid, "token": tokens.make_token(user)})


@never_cache
def login_link_view(request, uidb64: str, token: str):
    User = get_user_model()
    try:
        user = User.objects.get(pk=force_str(urlsafe_base64_decode(uidb64)), is_active=True)
    except (User.DoesNotExist, ValueError, TypeError, OverflowError):
        user = None
    if user is None or not tokens.check_token(user, token):
        return HttpResponseForbidden(
            "This login link is spent or expired. Log in with your password, or restart "
            "`audobon up` for a new link."
        )
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect(settings.LOGIN_REDIRECT_URL)
