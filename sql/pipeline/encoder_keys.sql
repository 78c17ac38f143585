-- What the field encoders can see in the ratings before :before, in one scan: each
-- distinct user, each distinct movie, each distinct UTC month (every AutoInt+ field is
-- a function of one of the three), and the number of ratings (the grand total row).
-- `grouped` tells the rows apart: 3 = a user, 5 = a movie, 6 = a month, 7 = the total.
SELECT GROUPING(user_id, movie_id, month) AS grouped, user_id, movie_id, month, count(*) AS ratings
FROM (SELECT user_id, movie_id, extract(epoch FROM date_trunc('month', rated_at, 'UTC'))::bigint AS month
      FROM ratings WHERE rated_at < :before) AS rated
GROUP BY GROUPING SETS ((user_id), (movie_id), (month), ())
