// Calls a cecollm edge node through the official `openai` npm package, unchanged, as any
// OpenAI client would: one plain completion (sampled, seeded) and one streamed (greedy), then a
// chat completion plain and streamed (greedy); then logprobs as evaluations ask for them (echo,
// max_tokens 0), n = 2 with a seed, chat logprobs, and a vendor field ignored with a warning.
// Prints one JSON line with the texts, token ids and shapes for test_openai_clients.sh to check.
import OpenAI from 'openai';

const [baseURL, model, prompt] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'not-needed', maxRetries: 0, timeout: 120000 });

const plain = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0.8, seed: 7,
  x_ce: { threshold: 2 },  // every token from the cloud's final layer
});

const stream = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0, stream: true, x_ce: { threshold: 2 },
});
let text = '';
const ids = [];
let finish = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.text ?? '';
  finish = chunk.choices[0]?.finish_reason ?? finish;
  for (const t of chunk.x_ce?.tokens ?? []) ids.push(t.id);
}

const messages = [{ role: 'user', content: prompt }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0, x_ce: { threshold: 2 } });
const chatStream = await client.chat.completions.create({
  model, messages, max_completion_tokens: 16, temperature: 0, stream: true, x_ce: { threshold: 2 },
});
let chatText = '';
let chatRole = null;
const chatIds = [];
for await (const chunk of chatStream) {
  chatRole = chunk.choices[0]?.delta?.role ?? chatRole;
  chatText += chunk.choices[0]?.delta?.content ?? '';
  for (const t of chunk.x_ce?.tokens ?? []) chatIds.push(t.id);
}

// lm-eval-harness's loglikelihood request: the prompt scored, nothing generated.
const echo = await client.completions.create({
  model, prompt, max_tokens: 0, echo: true, logprobs: 2, temperature: 0, x_ce: { threshold: 2 },
});

// Two choices of one seeded request: choice i draws with seed 7 + i.
const two = await client.completions.create({
  model, prompt, max_tokens: 24, temperature: 0.8, seed: 7, n: 2, logprobs: 1, x_ce: { threshold: 2 },
});

const chatLogprobs = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, logprobs: true, top_logprobs: 3, x_ce: { threshold: 2 },
});
const chatLogprobsStream = await client.chat.completions.create({
  model, messages, max_tokens: 16, temperature: 0, logprobs: true, top_logprobs: 3, stream: true, x_ce: { threshold: 2 },
});
const streamedContent = [];
for await (const chunk of chatLogprobsStream) streamedContent.push(...(chunk.choices[0]?.logprobs?.content ?? []));

// Fields llama-server's clients send: ignored, with a Warning header.
const { data: vendor, response: vendorResponse } = await client.completions
  .create({ model, prompt, max_tokens: 2, typical_p: 0.9, mirostat: 0 })
  .withResponse();

const models = await client.models.list();
console.log(JSON.stringify({
  models: models.data.map((m) => m.id),
  plain: { text: plain.choices[0].text, ids: plain.x_ce.tokens.map((t) => t.id), finish: plain.choices[0].finish_reason,
           usage: plain.usage },
  stream: { text, ids, finish },
  chat: { text: chat.choices[0].message.content, role: chat.choices[0].message.role, object: chat.object,
          ids: chat.x_ce.tokens.map((t) => t.id) },
  chat_stream: { text: chatText, role: chatRole, ids: chatIds },
  echo: { text: echo.choices[0].text, logprobs: echo.choices[0].logprobs, finish: echo.choices[0].finish_reason,
          usage: echo.usage, prompt_tokens: echo.x_ce.prompt_tokens },
  two: { choices: two.choices.map((c) => ({ index: c.index, text: c.text, logprobs: c.logprobs })),
         x_ce: two.x_ce.choices.map((c) => ({ seed: c.seed, ids: c.tokens.map((t) => t.id) })), usage: two.usage },
  chat_logprobs: { content: chatLogprobs.choices[0].logprobs.content, refusal: chatLogprobs.choices[0].logprobs.refusal,
                   ids: chatLogprobs.x_ce.tokens.map((t) => t.id), streamed: streamedContent },
  vendor: { warning: vendorResponse.headers.get('warning'), ignored: vendor.x_ce.ignored_fields },
}));
